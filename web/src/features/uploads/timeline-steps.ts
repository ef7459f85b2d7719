// The timeline's steps (GET /uploads/{id}/timeline) as the uploader reads them.

export const STEPS: Record<string, string> = {
  started: "Upload started",
  pipelined: "Sending to the PACS while uploading",
  received: "Received by the gateway",
  validated: "Checked and accepted",
  rejected: "Refused by the gateway",
  queued: "Waiting for the PACS",
  pacs_confirmed: "Confirmed by the PACS",
  failed: "PACS delivery failed",
  retried: "Sent again",
  cancelled: "Cancelled",
  expired: "Expired unfinished",
  purged: "Stored copy deleted",
  report_opened: "Waiting for a report",
  report_assigned: "Report assigned to a radiologist",
  report_ready: "Report ready",
  report_amended: "Report amended",
  report_from_pacs_skipped: "A report in the PACS could not be read",
  report_stored_in_pacs: "Report stored in the PACS",
  report_refused_by_pacs: "Report refused by the PACS",
  report_write_back_failed: "Report not sent: its PACS was removed",
};

/** A step's label; a step this build does not know yet shows as the API names it. */
export function stepLabel(step: string): string {
  return STEPS[step] ?? step;
}
