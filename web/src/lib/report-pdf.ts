// A report's PDF (the clinician's and the radiologist's pages).
import { api, data } from "./api/client";

/** The report's PDF, fetched with the access token, saved through a temporary blob: URL. */
export async function downloadReportPdf(id: string): Promise<void> {
  const blob = await data(api.GET("/api/v1/reports/{report_id}/pdf", { params: { path: { report_id: id } }, parseAs: "blob" }));
  const url = URL.createObjectURL(blob);
  try {
    const link = document.createElement("a");
    link.href = url;
    link.download = `report-${id}.pdf`; // ids only: no patient data in the file name
    document.body.append(link);
    link.click();
    link.remove();
  } finally {
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }
}
