// The clinician's uploads as the gateway records them.
import { queryOptions } from "@tanstack/react-query";
import { api, data } from "../../lib/api/client";

const POLL_MS = 4000;
/** With the live stream open, its events refresh the uploads: a slow poll is enough. */
const LIVE_POLL_MS = 30_000;
const SETTLED = new Set(["delivered", "failed", "rejected", "cancelled", "expired"]);

export function myUploadsQuery(live: boolean) {
  return queryOptions({
    queryKey: ["uploads"],
    queryFn: () => data(api.GET("/api/v1/uploads", { params: { query: { limit: 50 } } })),
    refetchInterval: live ? LIVE_POLL_MS : POLL_MS,
  });
}

/** One upload without its file list (cheap to poll), for the PACS's progress. */
export function uploadStatusQuery(id: string, status: string, live: boolean) {
  return queryOptions({
    queryKey: ["upload", id],
    queryFn: () => data(api.GET("/api/v1/uploads/{upload_id}", { params: { path: { upload_id: id }, query: { files: false } } })),
    refetchInterval: SETTLED.has(status) ? false : live ? LIVE_POLL_MS : POLL_MS,
  });
}

/** Every step of the study's journey with its time (the gateway's record). */
export function uploadTimelineQuery(id: string) {
  return queryOptions({
    queryKey: ["upload", id, "timeline"],
    queryFn: () => data(api.GET("/api/v1/uploads/{upload_id}/timeline", { params: { path: { upload_id: id } } })),
  });
}

/** The refused files of a finished upload, with their reasons. */
export function uploadFilesQuery(id: string) {
  return queryOptions({
    queryKey: ["upload", id, "files"],
    queryFn: () => data(api.GET("/api/v1/uploads/{upload_id}", { params: { path: { upload_id: id } } })),
  });
}

/** The reports of the clinician's own uploads (the gateway's worklist, for a clinician). */
export function myReportsQuery(live: boolean) {
  return queryOptions({
    queryKey: ["reports"],
    queryFn: () => data(api.GET("/api/v1/reports", { params: { query: { limit: 200 } } })),
    refetchInterval: live ? LIVE_POLL_MS : 15_000,
  });
}

export function reportQuery(id: string) {
  return queryOptions({
    queryKey: ["report", id],
    queryFn: () => data(api.GET("/api/v1/reports/{report_id}", { params: { path: { report_id: id } } })),
  });
}
