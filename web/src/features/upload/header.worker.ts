// Reads the DICOM headers of the picked files off the main thread.
import { readFileHeader, type HeaderResult } from "./dicom-header";

export interface HeaderRequest {
  id: number;
  file: File;
}
export interface HeaderResponse {
  id: number;
  result: HeaderResult | { ok: false; reason: "unreadable" };
}

self.onmessage = async (event: MessageEvent<HeaderRequest>) => {
  const { id, file } = event.data;
  let result: HeaderResponse["result"];
  try {
    result = await readFileHeader(file);
  } catch {
    result = { ok: false, reason: "unreadable" };
  }
  self.postMessage({ id, result } satisfies HeaderResponse);
};
