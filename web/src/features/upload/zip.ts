// ZIP archives of DICOM files (a zipped CD export is common): each member becomes a file of its
// own with its header read. Runs in the header worker.
import { BlobReader, BlobWriter, configure, ZipReader } from "@zip.js/zip.js";
import { HEADER_BYTES, readFileHeader, readHeader, type HeaderResult } from "./dicom-header";

// No nested worker from a blob: URL (the CSP allows workers from 'self' only): this already
// runs in one.
configure({ useWebWorkers: false });

export type ReadResult = HeaderResult | { ok: false; reason: "unreadable" };

export interface ZipMember {
  name: string;
  blob: Blob;
  result: ReadResult;
  sha256: string | null;
}

export async function readMember(file: Blob): Promise<ReadResult> {
  try {
    return await readFileHeader(file);
  } catch {
    return { ok: false, reason: "unreadable" };
  }
}

/** Up to this size a file is read whole at once: its header, and its SHA-256 by the browser's
 * native digest in the same pass (the upload then need not read it again to hash it). */
export const WHOLE = 32 << 20;

function hex(buffer: ArrayBuffer): string {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The header of a file and, for a file up to WHOLE bytes, its SHA-256 (null otherwise). */
export async function readAndHash(file: Blob): Promise<{ result: ReadResult; sha256: string | null }> {
  if (file.size > WHOLE) return { result: await readMember(file), sha256: null };
  try {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const result = readHeader(bytes.subarray(0, Math.min(bytes.length, HEADER_BYTES)), bytes.length <= HEADER_BYTES);
    const complete = result.ok || result.reason === "not_dicom" ? result : readHeader(bytes, true);
    const sha256 = complete.ok ? hex(await crypto.subtle.digest("SHA-256", bytes)) : null;
    return { result: complete, sha256 };
  } catch {
    return { result: { ok: false, reason: "unreadable" }, sha256: null };
  }
}

/** The members of a ZIP archive (folders and empty files left out), or null when it is not a
 * readable ZIP. */
export async function unzip(file: Blob): Promise<ZipMember[] | null> {
  const reader = new ZipReader(new BlobReader(file));
  try {
    const members: ZipMember[] = [];
    for (const entry of await reader.getEntries()) {
      if (entry.directory || !entry.getData) continue;
      const blob = await entry.getData(new BlobWriter());
      if (blob.size === 0) continue;
      members.push({ name: entry.filename, blob, ...(await readAndHash(blob)) });
    }
    return members;
  } catch {
    return null;
  } finally {
    await reader.close().catch(() => undefined);
  }
}
