// The picked files grouped by study, with what the clinician checks before sending.
import type { DicomHeader, HeaderResult } from "./dicom-header";

export interface PickedFile {
  file: File;
  /** The path inside the picked folder, or the file name. */
  name: string;
  /** Its SHA-256 when it was computed while reading the header. */
  sha256?: string | null;
}

export interface SeriesGroup {
  seriesUid: string;
  number: string;
  description: string;
  modality: string;
  instances: number;
}

export interface StudyCandidate {
  studyUid: string;
  patientName: string;
  patientId: string;
  birthDate: string;
  studyDate: string;
  modalities: string[];
  description: string;
  accessionNumber: string;
  series: SeriesGroup[];
  files: PickedFile[];
  totalBytes: number;
}

export interface Grouping {
  studies: StudyCandidate[];
  /** Files that are not DICOM instances (or could not be read), with the reason. */
  skipped: { name: string; reason: string }[];
}

const REASONS: Record<string, string> = {
  not_dicom: "not a DICOM file",
  truncated: "damaged DICOM file (cut short)",
  unreadable: "could not be read",
  no_study: "DICOM file without a study UID",
  dicomdir: "DICOMDIR (a CD's index, not an image)",
};

export function groupByStudy(files: { picked: PickedFile; result: HeaderResult | { ok: false; reason: string } }[]): Grouping {
  const studies = new Map<string, { candidate: StudyCandidate; series: Map<string, SeriesGroup> }>();
  const skipped: Grouping["skipped"] = [];
  const dicomdirs: PickedFile[] = [];
  for (const { picked, result } of files) {
    if (!result.ok) {
      skipped.push({ name: picked.name, reason: REASONS[result.reason] ?? result.reason });
      continue;
    }
    const header: DicomHeader = result.header;
    if (header.kind === "dicomdir") {
      dicomdirs.push(picked);
      continue;
    }
    if (!header.studyUid) {
      skipped.push({ name: picked.name, reason: REASONS.no_study! });
      continue;
    }
    let entry = studies.get(header.studyUid);
    if (!entry) {
      entry = {
        candidate: {
          studyUid: header.studyUid,
          patientName: header.patientName,
          patientId: header.patientId,
          birthDate: header.birthDate,
          studyDate: header.studyDate,
          modalities: [],
          description: header.studyDescription,
          accessionNumber: header.accessionNumber,
          series: [],
          files: [],
          totalBytes: 0,
        },
        series: new Map(),
      };
      studies.set(header.studyUid, entry);
    }
    const { candidate } = entry;
    candidate.files.push(picked);
    candidate.totalBytes += picked.file.size;
    if (header.modality && !candidate.modalities.includes(header.modality)) candidate.modalities.push(header.modality);
    const seriesUid = header.seriesUid ?? "";
    const series = entry.series.get(seriesUid) ?? {
      seriesUid,
      number: header.seriesNumber,
      description: header.seriesDescription,
      modality: header.modality,
      instances: 0,
    };
    series.instances += 1;
    entry.series.set(seriesUid, series);
  }
  const result = [...studies.values()].map(({ candidate, series }) => ({
    ...candidate,
    series: [...series.values()].sort((a, b) => Number(a.number) - Number(b.number)),
    files: candidate.files.sort((a, b) => a.name.localeCompare(b.name)),
  }));
  // A CD's DICOMDIR goes with its study when the CD holds one study (the gateway accepts it
  // and never forwards it); with several studies it is left out.
  for (const dicomdir of dicomdirs) {
    const only = result.length === 1 ? result[0] : undefined;
    if (only) {
      only.files.push(dicomdir);
      only.totalBytes += dicomdir.file.size;
    } else skipped.push({ name: dicomdir.name, reason: REASONS.dicomdir! });
  }
  return { studies: result, skipped };
}

/** `YYYYMMDD` as `YYYY-MM-DD` (as written if it is not a DICOM date). */
export function formatDicomDate(value: string): string {
  return /^\d{8}$/.test(value) ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : value;
}

/** A DICOM person name (`FAMILY^GIVEN`) as people write it. */
export function formatPersonName(value: string): string {
  const [family = "", given = "", middle = ""] = (value.split("=")[0] ?? "").split("^");
  return [family, [given, middle].filter(Boolean).join(" ")].filter(Boolean).join(", ");
}
