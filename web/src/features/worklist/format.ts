// How the radiologist's pages show a report's state.
import type { Schemas } from "../../lib/api/client";

export const REPORT_STATUS: Record<Schemas["ReportStatus"], string> = {
  pending: "Not assigned",
  assigned: "To report",
  ready: "Signed",
  amended: "Amended",
};

/** Whether the report has a signed version (then it is amended, no longer drafted). */
export function isSigned(status: Schemas["ReportStatus"]): boolean {
  return status === "ready" || status === "amended";
}
