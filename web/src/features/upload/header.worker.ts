// Reads the DICOM headers of the picked files off the main thread (and the SHA-256 of those
// read whole), and opens ZIP archives (each member becomes a file of its own, read the same way).
import { readAndHash, unzip, type ReadResult, type ZipMember } from "./zip";

export type { ReadResult, ZipMember };

export type HeaderRequest = { id: number; op: "header"; file: Blob } | { id: number; op: "zip"; file: Blob };

export type HeaderResponse =
  | { id: number; op: "header"; result: ReadResult; sha256: string | null }
  | { id: number; op: "zip"; members: ZipMember[] | null };

self.onmessage = async (event: MessageEvent<HeaderRequest>) => {
  const request = event.data;
  if (request.op === "zip") {
    self.postMessage({ id: request.id, op: "zip", members: await unzip(request.file) } satisfies HeaderResponse);
  } else {
    self.postMessage({ id: request.id, op: "header", ...(await readAndHash(request.file)) } satisfies HeaderResponse);
  }
};
