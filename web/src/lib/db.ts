// The upload queue in IndexedDB (Dexie): every version of the schema, in this one file.
// It holds patient data (the files and their details, the report drafts not yet at the
// gateway): cleared at sign-out.
import Dexie, { type EntityTable } from "dexie";

export type StudyState =
  | "queued" // waiting for its turn (or for the network)
  | "hashing"
  | "uploading"
  | "paused" // by the clinician, or offline
  // The gateway does not answer, or answers "not now" (503...): tried again by itself, the
  // note says why. (A new value in an indexed field: no new schema version is needed.)
  | "waiting"
  | "completing"
  | "sent" // the gateway accepted it; from now on the server's record tells the rest
  | "already_sent" // the gateway had it already: nothing was sent
  | "failed"
  | "cancelled";

export interface QueuedStudy {
  id: string;
  studyUid: string;
  state: StudyState;
  /** Why it is paused, waiting or failed (a readable sentence), null otherwise. */
  note: string | null;
  pausedByUser: boolean;
  uploadId: string | null;
  patientName: string;
  patientId: string;
  birthDate: string;
  studyDate: string;
  modality: string;
  description: string;
  accessionNumber: string;
  seriesCount: number;
  fileCount: number;
  totalBytes: number;
  sentBytes: number;
  createdAt: number;
}

export interface QueuedFile {
  id?: number;
  studyId: string;
  index: number;
  name: string;
  size: number;
  sha256: string | null;
  blob: Blob | null; // dropped once the study is sent
}

/** A report's draft typed on this device and not yet acknowledged by the gateway. */
export interface LocalDraft {
  reportId: string;
  findings: string;
  impression: string;
  /** The gateway's draft it was written over: still the gateway's at reopening = this is newer. */
  baseFindings: string;
  baseImpression: string;
  savedAt: number;
}

export class QueueDatabase extends Dexie {
  studies!: EntityTable<QueuedStudy, "id">;
  files!: EntityTable<QueuedFile, "id">;
  drafts!: EntityTable<LocalDraft, "reportId">;

  constructor(name = "relaypacs") {
    super(name);
    this.version(1).stores({
      studies: "id, state, createdAt",
      files: "++id, studyId, [studyId+index]",
    });
    // Version 2: the report editor's unsent drafts (a reload while offline keeps them).
    this.version(2).stores({ drafts: "reportId" });
  }
}

export const db = new QueueDatabase();
