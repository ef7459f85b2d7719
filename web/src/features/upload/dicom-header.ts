// What the app reads of a DICOM file before uploading it: the study, series and instance it
// belongs to and the details the clinician confirms. Runs in a worker (header.worker.ts) on the
// first bytes of each file; pure, so that it is tested on real files (dicom-header.test.ts).
import * as dicomParser from "dicom-parser";

export interface DicomHeader {
  kind: "instance" | "dicomdir";
  studyUid: string | null;
  seriesUid: string | null;
  sopUid: string | null;
  patientName: string;
  patientId: string;
  birthDate: string;
  studyDate: string;
  modality: string;
  studyDescription: string;
  accessionNumber: string;
  seriesDescription: string;
  seriesNumber: string;
}

export type HeaderResult = { ok: true; header: DicomHeader } | { ok: false; reason: "not_dicom" | "truncated" };

const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";
const IMPLICIT_LITTLE = "1.2.840.10008.1.2";
/** How much of a file is read first; a header larger than this is read again whole. */
export const HEADER_BYTES = 256 * 1024;

const DECODERS: Record<string, string> = {
  "ISO_IR 192": "utf-8",
  "ISO_IR 100": "windows-1252",
  "ISO_IR 101": "iso-8859-2",
  "ISO_IR 144": "iso-8859-5",
  "ISO_IR 127": "iso-8859-6",
  "ISO_IR 126": "iso-8859-7",
  "ISO_IR 138": "iso-8859-8",
  "ISO_IR 148": "windows-1254",
  "ISO_IR 166": "windows-874",
  GB18030: "gb18030",
  GBK: "gbk",
};

function hasPreamble(bytes: Uint8Array): boolean {
  return bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 && bytes[130] === 0x43 && bytes[131] === 0x4d;
}

/** A raw data set without preamble starts with a small group (0008 in practice), little endian. */
function looksRaw(bytes: Uint8Array): boolean {
  if (bytes.length < 8) return false;
  const group = bytes[0]! | (bytes[1]! << 8);
  return group === 0x0008 || group === 0x0002;
}

function parse(bytes: Uint8Array, complete: boolean): dicomParser.DataSet | "truncated" | "not_dicom" {
  const raw = !hasPreamble(bytes);
  if (raw && !looksRaw(bytes)) return "not_dicom";
  const options: dicomParser.ParseDicomOptions = { untilTag: "x7fe00010" };
  if (raw) options.TransferSyntaxUID = IMPLICIT_LITTLE;
  try {
    return dicomParser.parseDicom(bytes, options);
  } catch (error) {
    // dicom-parser throws {exception, dataSet} when it runs out of bytes part-way.
    const partial = (error as { dataSet?: dicomParser.DataSet } | null)?.dataSet;
    if (partial?.string("x0020000d")) return partial;
    return complete ? (raw ? "not_dicom" : "truncated") : "truncated";
  }
}

function text(dataSet: dicomParser.DataSet, tag: string, decoder: TextDecoder | null): string {
  const element = dataSet.elements[tag];
  if (!element || element.length === 0) return "";
  if (decoder === null) return (dataSet.string(tag) ?? "").trim();
  const bytes = dataSet.byteArray.subarray(element.dataOffset, element.dataOffset + element.length);
  return decoder.decode(bytes).replace(/[\0 ]+$/, "").trim();
}

function decoderFor(dataSet: dicomParser.DataSet): TextDecoder | null {
  const charset = (dataSet.string("x00080005") ?? "").split("\\").map((s) => s.trim()).filter(Boolean);
  const label = charset.length === 1 ? DECODERS[charset[0]!] : undefined;
  if (!label) return null;
  try {
    return new TextDecoder(label);
  } catch {
    return null;
  }
}

/** Read the header of a file from its first bytes; `complete`: these are all of its bytes. */
export function readHeader(bytes: Uint8Array, complete: boolean): HeaderResult {
  const dataSet = parse(bytes, complete);
  if (dataSet === "not_dicom" || dataSet === "truncated") return { ok: false, reason: dataSet };
  const decoder = decoderFor(dataSet);
  const get = (tag: string) => text(dataSet, tag, decoder);
  const uid = (tag: string) => (dataSet.string(tag) ?? "").replace(/\0/g, "").trim() || null;
  const mediaClass = uid("x00020002");
  const isDicomdir = mediaClass === DICOMDIR_CLASS || dataSet.elements.x00041220 !== undefined;
  return {
    ok: true,
    header: {
      kind: isDicomdir ? "dicomdir" : "instance",
      studyUid: isDicomdir ? null : uid("x0020000d"),
      seriesUid: isDicomdir ? null : uid("x0020000e"),
      sopUid: isDicomdir ? null : uid("x00080018"),
      patientName: isDicomdir ? "" : get("x00100010"),
      patientId: isDicomdir ? "" : get("x00100020"),
      birthDate: isDicomdir ? "" : get("x00100030"),
      studyDate: isDicomdir ? "" : get("x00080020"),
      modality: isDicomdir ? "" : get("x00080060"),
      studyDescription: isDicomdir ? "" : get("x00081030"),
      accessionNumber: isDicomdir ? "" : get("x00080050"),
      seriesDescription: isDicomdir ? "" : get("x0008103e"),
      seriesNumber: isDicomdir ? "" : get("x00200011"),
    },
  };
}

/** Read a file's header from a Blob: its first bytes, then all of it if the header is longer. */
export async function readFileHeader(file: Blob): Promise<HeaderResult> {
  const first = new Uint8Array(await file.slice(0, HEADER_BYTES).arrayBuffer());
  const complete = file.size <= HEADER_BYTES;
  const result = readHeader(first, complete);
  if (result.ok || complete || result.reason === "not_dicom") return result;
  const limit = Math.min(file.size, 64 << 20); // a header is never this long: not DICOM
  return readHeader(new Uint8Array(await file.slice(0, limit).arrayBuffer()), limit === file.size);
}
