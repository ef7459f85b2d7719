// The audit log's search (docs/api.md, Audit): the page's filters as the API's query, and the
// export of every matching record.
import { api, data } from "../../lib/api/client";

export interface AuditFilters {
  action: string;
  outcome: "" | "success" | "failure" | "denied";
  actorId: string;
  study: string;
  /** A `datetime-local` value: the browser's local time, no zone. */
  since: string;
  until: string;
}

export const NO_AUDIT_FILTERS: AuditFilters = { action: "", outcome: "", actorId: "", study: "", since: "", until: "" };

export interface AuditQuery {
  action?: string;
  outcome?: string;
  actor_id?: string;
  study_instance_uid?: string;
  since?: string;
  until?: string;
}

const LOCAL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A local time typed in the page as the ISO 8601 instant (UTC, with its zone) that the API
 * wants; null when it is not a whole time yet. */
export function localToInstant(value: string): string | null {
  if (!LOCAL.test(value)) return null;
  const time = new Date(value); // read as local time (no zone in the string)
  return Number.isNaN(time.getTime()) ? null : time.toISOString();
}

/** The API's filters: blank ones left out, times as instants, an actor id only when whole
 * (the API refuses anything else with a 422). */
export function auditQuery(filters: AuditFilters): AuditQuery {
  const query: AuditQuery = {};
  const action = filters.action.trim();
  if (action) query.action = action;
  if (filters.outcome) query.outcome = filters.outcome;
  const actor = filters.actorId.trim();
  if (UUID.test(actor)) query.actor_id = actor.toLowerCase();
  const study = filters.study.trim();
  if (study) query.study_instance_uid = study;
  const since = localToInstant(filters.since);
  if (since) query.since = since;
  const until = localToInstant(filters.until);
  if (until) query.until = until;
  return query;
}

export function auditPage(query: AuditQuery, before: number | null) {
  return data(api.GET("/api/v1/admin/audit", { params: { query: { ...query, limit: 100, ...(before === null ? {} : { before }) } } }));
}

/** Every matching record, oldest first, saved as a file (through a temporary blob: URL). */
export async function exportAudit(query: AuditQuery, format: "csv" | "jsonl"): Promise<void> {
  const blob = await data(api.GET("/api/v1/admin/audit/export", { params: { query: { ...query, format } }, parseAs: "blob" }));
  const url = URL.createObjectURL(blob);
  try {
    const link = document.createElement("a");
    link.href = url;
    link.download = `audit.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
  } finally {
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }
}
