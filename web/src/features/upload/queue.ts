// The upload queue's operations on IndexedDB (lib/db.ts): what survives a reload, a closed tab
// or a restarted browser.
import type { QueueDatabase, QueuedFile, QueuedStudy, StudyState } from "../../lib/db";
import type { StudyCandidate } from "./group";

/** States in which a study still has work to do (and its files are kept). */
export const ACTIVE: readonly StudyState[] = ["queued", "hashing", "uploading", "paused", "waiting", "completing"];

export class QuotaError extends Error {
  constructor(readonly needed: number, readonly available: number) {
    super(
      `Not enough storage on this device to queue the study: it needs ${formatBytes(needed)}, ` +
        `${formatBytes(available)} is free. Free some space or choose fewer files.`,
    );
    this.name = "QuotaError";
  }
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

/** Room for `bytes` more in this origin's storage (the browser's estimate), or QuotaError. */
export async function checkQuota(bytes: number, estimate: () => Promise<StorageEstimate> = () => navigator.storage.estimate()): Promise<void> {
  const { quota, usage } = await estimate();
  if (quota === undefined) return; // the browser does not say: try
  const available = quota - (usage ?? 0);
  const needed = Math.ceil(bytes * 1.05) + (1 << 20); // the blobs and their records
  if (needed > available) throw new QuotaError(needed, available);
}

/** Put a confirmed study and its files (the blobs too) in the queue; returns its id. */
export async function enqueueStudy(
  db: QueueDatabase,
  candidate: StudyCandidate,
  options: { estimate?: () => Promise<StorageEstimate>; now?: number } = {},
): Promise<string> {
  await checkQuota(candidate.totalBytes, options.estimate);
  const id = crypto.randomUUID();
  const study: QueuedStudy = {
    id,
    studyUid: candidate.studyUid,
    state: "queued",
    note: null,
    pausedByUser: false,
    uploadId: null,
    patientName: candidate.patientName,
    patientId: candidate.patientId,
    birthDate: candidate.birthDate,
    studyDate: candidate.studyDate,
    modality: candidate.modalities.join("/"),
    description: candidate.description,
    accessionNumber: candidate.accessionNumber,
    seriesCount: candidate.series.length,
    fileCount: candidate.files.length,
    totalBytes: candidate.totalBytes,
    sentBytes: 0,
    createdAt: options.now ?? Date.now(),
  };
  const files: QueuedFile[] = candidate.files.map((picked, index) => ({
    studyId: id,
    index,
    name: picked.name.slice(-255),
    size: picked.file.size,
    sha256: picked.sha256 ?? null,
    blob: picked.file,
  }));
  await db.transaction("rw", db.studies, db.files, async () => {
    await db.studies.add(study);
    await db.files.bulkAdd(files);
  });
  return id;
}

export function studyFiles(db: QueueDatabase, studyId: string): Promise<QueuedFile[]> {
  return db.files.where("studyId").equals(studyId).sortBy("index");
}

/** The studies with work left, oldest first. */
export async function activeStudies(db: QueueDatabase): Promise<QueuedStudy[]> {
  const studies = await db.studies.where("state").anyOf([...ACTIVE]).toArray();
  return studies.sort((a, b) => a.createdAt - b.createdAt);
}

export async function updateStudy(db: QueueDatabase, id: string, changes: Partial<QueuedStudy>): Promise<void> {
  await db.studies.update(id, changes);
}

/** A study is done with its files: the blobs (patient data) are dropped from the device. */
export async function finishStudy(db: QueueDatabase, id: string, changes: Partial<QueuedStudy>): Promise<void> {
  await db.transaction("rw", db.studies, db.files, async () => {
    await db.studies.update(id, changes);
    await db.files.where("studyId").equals(id).modify({ blob: null });
  });
}

/** Remove one study and its files from the device (it stays in "My uploads"). */
export async function forgetStudy(db: QueueDatabase, id: string): Promise<void> {
  await db.transaction("rw", db.studies, db.files, async () => {
    await db.files.where("studyId").equals(id).delete();
    await db.studies.delete(id);
  });
}

/** Forget everything (sign-out): the queue, and the report drafts not yet sent, hold patient
 * data. */
export async function clearQueue(db: QueueDatabase): Promise<void> {
  await db.transaction("rw", db.studies, db.files, db.drafts, async () => {
    await db.studies.clear();
    await db.files.clear();
    await db.drafts.clear();
  });
}
