// ZIP archives of DICOM files (a zipped CD export is common): each member becomes a file of its
// own with its header read. Runs in the header worker.
import { BlobReader, BlobWriter, configure, ZipReader } from "@zip.js/zip.js";
import { readFileHeader, type HeaderResult } from "./dicom-header";

// No nested worker from a blob: URL (the CSP allows workers from 'self' only): this already
// runs in one.
configure({ useWebWorkers: false });

export type ReadResult = HeaderResult | { ok: false; reason: "unreadable" };

export interface ZipMember {
  name: string;
  blob: Blob;
  result: ReadResult;
}

export async function readMember(file: Blob): Promise<ReadResult> {
  try {
    return await readFileHeader(file);
  } catch {
    return { ok: false, reason: "unreadable" };
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
      members.push({ name: entry.filename, blob, result: await readMember(blob) });
    }
    return members;
  } catch {
    return null;
  } finally {
    await reader.close().catch(() => undefined);
  }
}
