// The administrator's assignment calls (docs/api.md, Reports): the reports waiting for a
// radiologist, the radiologists with their modalities, assign, and the modalities each reads.
import { queryOptions } from "@tanstack/react-query";
import { api, data, type Schemas } from "../../lib/api/client";

export function unassignedOptions(live: boolean) {
  return queryOptions({
    queryKey: ["reports", "unassigned"],
    queryFn: () => data(api.GET("/api/v1/reports", { params: { query: { status: "pending", limit: 100 } } })),
    refetchInterval: live ? 30_000 : 10_000,
  });
}

export function radiologistsOptions() {
  return queryOptions({
    queryKey: ["radiologists"],
    queryFn: () => data(api.GET("/api/v1/admin/radiologists")),
  });
}

export function assignReport(reportId: string, radiologistId: string) {
  return data(
    api.POST("/api/v1/admin/reports/{report_id}/assign", {
      params: { path: { report_id: reportId } },
      body: { radiologist_id: radiologistId },
    }),
  );
}

export function setModalities(userId: string, modalities: string[]) {
  return data(
    api.PUT("/api/v1/admin/radiologists/{user_id}/modalities", { params: { path: { user_id: userId } }, body: { modalities } }),
  );
}

const MODALITY = /^[A-Z0-9_]{1,16}$/;

/** The modalities typed as "ct, MR  us": upper case, each once, in the order typed; the
 * malformed ones listed apart so that the page can say which. */
export function parseModalities(text: string): { modalities: string[]; invalid: string[] } {
  const modalities: string[] = [];
  const invalid: string[] = [];
  for (const word of text.split(/[\s,;]+/)) {
    const code = word.trim().toUpperCase();
    if (!code) continue;
    if (!MODALITY.test(code)) invalid.push(word.trim());
    else if (!modalities.includes(code)) modalities.push(code);
  }
  return { modalities, invalid };
}

export function usersOptions() {
  return queryOptions({
    queryKey: ["admin", "users"],
    queryFn: () => data(api.GET("/api/v1/admin/users", { params: { query: { limit: 200 } } })),
  });
}

export function setUserActive(userId: string, active: boolean) {
  const params = { params: { path: { user_id: userId } } };
  return data(active ? api.POST("/api/v1/admin/users/{user_id}/enable", params) : api.POST("/api/v1/admin/users/{user_id}/disable", params));
}

/** Uploads needing attention: those the PACS refused, retrying, or not moving. */
export function problemUploadsOptions(live: boolean) {
  return queryOptions({
    queryKey: ["uploads", "attention"],
    queryFn: () => data(api.GET("/api/v1/admin/uploads", { params: { query: { limit: 100 } } })),
    refetchInterval: live ? 30_000 : 10_000,
  });
}

export function retryUpload(uploadId: string) {
  return data(api.POST("/api/v1/admin/uploads/{upload_id}/retry", { params: { path: { upload_id: uploadId } } }));
}

export function cancelUpload(uploadId: string) {
  return data(api.POST("/api/v1/admin/uploads/{upload_id}/cancel", { params: { path: { upload_id: uploadId } } }));
}

/** One upload without its file list: the PACS's last answer (`forwarding.last_error`). */
export function uploadDetailOptions(id: string, status: string) {
  return queryOptions({
    queryKey: ["upload", id, status],
    queryFn: () => data(api.GET("/api/v1/uploads/{upload_id}", { params: { path: { upload_id: id }, query: { files: false } } })),
  });
}

export function createUser(body: Schemas["UserCreate"]) {
  return data(api.POST("/api/v1/admin/users", { body }));
}

export function resetTotp(userId: string) {
  return data(api.DELETE("/api/v1/admin/users/{user_id}/totp", { params: { path: { user_id: userId } } }));
}

export function changeRole(userId: string, role: Schemas["Role"]) {
  return data(api.PUT("/api/v1/admin/users/{user_id}/role", { params: { path: { user_id: userId } }, body: { role } }));
}

// The gateway's rule (relaypacs/users/schemas.py, UserCreate.username).
const USERNAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

/** What is wrong with a new account's username, before asking the gateway (null: nothing). */
export function usernameProblem(username: string): string | null {
  if (username.length === 0) return "Choose a username.";
  if (username.length > 64) return "A username has at most 64 characters.";
  if (!USERNAME.test(username)) return "A username starts with a letter or a digit, then letters, digits, dots, dashes, underscores or @.";
  return null;
}
