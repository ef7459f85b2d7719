// The radiologist's calls: the worklist, a report with its study, the draft, sign and amend
// (docs/api.md, Reports).
import { queryOptions } from "@tanstack/react-query";
import { api, data, type Schemas } from "../../lib/api/client";

export type ReportStatus = Schemas["ReportStatus"];

/** The worklist's filters as the page holds them ("" is "any"). */
export interface WorklistFilters {
  status: "" | ReportStatus;
  modality: string;
  dateFrom: string;
  dateTo: string;
  text: string;
}

export const NO_FILTERS: WorklistFilters = { status: "", modality: "", dateFrom: "", dateTo: "", text: "" };

export interface WorklistQuery {
  status?: ReportStatus;
  modality?: string;
  date_from?: string;
  date_to?: string;
  q?: string;
  limit: number;
  offset: number;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** The query string of `GET /reports` for the filters: blank ones left out, the modality in
 * upper case (DICOM codes), a malformed day ignored rather than refused. */
export function worklistQuery(filters: WorklistFilters, page = 0, pageSize = 50): WorklistQuery {
  const query: WorklistQuery = { limit: pageSize, offset: page * pageSize };
  if (filters.status) query.status = filters.status;
  const modality = filters.modality.trim().toUpperCase();
  if (modality) query.modality = modality;
  if (DAY.test(filters.dateFrom)) query.date_from = filters.dateFrom;
  if (DAY.test(filters.dateTo)) query.date_to = filters.dateTo;
  const text = filters.text.trim();
  if (text) query.q = text;
  return query;
}

export const PAGE_SIZE = 50;

/** "1–50 of 120": the rows a page shows, for the page's status line. */
export function pageRange(page: number, pageSize: number, total: number): string {
  if (total === 0) return "0 studies";
  const first = Math.min(page * pageSize + 1, total);
  const last = Math.min((page + 1) * pageSize, total);
  return `${first}–${last} of ${total} ${total === 1 ? "study" : "studies"}`;
}

export function worklistOptions(filters: WorklistFilters, page: number, live: boolean) {
  const query = worklistQuery(filters, page, PAGE_SIZE);
  return queryOptions({
    // Under "reports": the live stream refreshes it when a study is assigned.
    queryKey: ["reports", "worklist", query],
    queryFn: () => data(api.GET("/api/v1/reports", { params: { query } })),
    refetchInterval: live ? 30_000 : 10_000,
  });
}

export function reportOptions(id: string) {
  return queryOptions({
    queryKey: ["report", id],
    queryFn: () => data(api.GET("/api/v1/reports/{report_id}", { params: { path: { report_id: id } } })),
  });
}

export function studyOptions(id: string) {
  return queryOptions({
    queryKey: ["report", id, "study"],
    queryFn: () => data(api.GET("/api/v1/reports/{report_id}/study", { params: { path: { report_id: id } } })),
  });
}

export interface ReportText {
  findings: string;
  impression: string;
}

export function saveDraft(id: string, text: ReportText) {
  return data(api.PUT("/api/v1/reports/{report_id}/draft", { params: { path: { report_id: id } }, body: text }));
}

export function signReport(id: string, text: ReportText) {
  return data(api.POST("/api/v1/reports/{report_id}/sign", { params: { path: { report_id: id } }, body: text }));
}

export function amendReport(id: string, text: ReportText, reason: string) {
  return data(
    api.POST("/api/v1/reports/{report_id}/amend", { params: { path: { report_id: id } }, body: { ...text, reason } }),
  );
}
