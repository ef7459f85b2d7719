import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QueueDatabase } from "../../lib/db";
import type { StudyCandidate } from "./group";
import { activeStudies, checkQuota, clearQueue, enqueueStudy, finishStudy, forgetStudy, QuotaError, studyFiles, updateStudy } from "./queue";

function candidate(sizes: number[], studyUid = "1.2.3"): StudyCandidate {
  const files = sizes.map((size, i) => ({ file: new File([new Uint8Array(size).fill(i)], `IM${i}`), name: `DICOM/IM${i}` }));
  return {
    studyUid,
    patientName: "DOE^JANE",
    patientId: "X9",
    birthDate: "19450203",
    studyDate: "20240102",
    modalities: ["CT", "SR"],
    description: "CT HEAD",
    accessionNumber: "A1",
    series: [{ seriesUid: "1.2.3.4", number: "1", description: "", modality: "CT", instances: sizes.length }],
    files,
    totalBytes: sizes.reduce((a, b) => a + b, 0),
  };
}

const plenty = async () => ({ quota: 10 * 2 ** 30, usage: 0 });
let db: QueueDatabase;

beforeEach(() => {
  db = new QueueDatabase(`test-${crypto.randomUUID()}`);
});
afterEach(async () => {
  await db.delete();
});

describe("the upload queue", () => {
  it("keeps a study, its files and their bytes across a new connection (a reload)", async () => {
    const id = await enqueueStudy(db, candidate([10, 20, 30]), { estimate: plenty });
    const reopened = new QueueDatabase(db.name);
    const [study] = await activeStudies(reopened);
    expect(study).toMatchObject({ id, state: "queued", modality: "CT/SR", fileCount: 3, totalBytes: 60, uploadId: null });
    const files = await studyFiles(reopened, id);
    expect(files.map((f) => [f.index, f.name, f.size])).toEqual([
      [0, "DICOM/IM0", 10],
      [1, "DICOM/IM1", 20],
      [2, "DICOM/IM2", 30],
    ]);
    expect(new Uint8Array(await files[2]!.blob!.arrayBuffer())).toEqual(new Uint8Array(30).fill(2));
    reopened.close();
  });

  it("lists the studies with work left, oldest first, not the finished ones", async () => {
    const first = await enqueueStudy(db, candidate([1], "1.1"), { estimate: plenty, now: 1 });
    const second = await enqueueStudy(db, candidate([1], "1.2"), { estimate: plenty, now: 2 });
    const third = await enqueueStudy(db, candidate([1], "1.3"), { estimate: plenty, now: 3 });
    await updateStudy(db, second, { state: "paused", pausedByUser: true });
    await finishStudy(db, third, { state: "sent" });
    expect((await activeStudies(db)).map((s) => s.id)).toEqual([first, second]);
  });

  it("drops the files' bytes once a study is sent (patient data leaves the device)", async () => {
    const id = await enqueueStudy(db, candidate([5, 5]), { estimate: plenty });
    await finishStudy(db, id, { state: "sent", uploadId: "u-1" });
    expect((await studyFiles(db, id)).map((f) => f.blob)).toEqual([null, null]);
    expect(await db.studies.get(id)).toMatchObject({ state: "sent", uploadId: "u-1" });
  });

  it("refuses a study the device has no room for, with the sizes in the message", async () => {
    const short = async () => ({ quota: 5_000_000, usage: 4_500_000 });
    await expect(enqueueStudy(db, candidate([1_000_000]), { estimate: short })).rejects.toBeInstanceOf(QuotaError);
    await expect(checkQuota(1_000_000, short)).rejects.toThrow(/it needs 2\.1 MB, 500 KB is free/);
    expect(await db.studies.count()).toBe(0);
  });

  it("forgets one study and its files, and only that one", async () => {
    const kept = await enqueueStudy(db, candidate([1], "2.1"), { estimate: plenty });
    const gone = await enqueueStudy(db, candidate([2, 3], "2.2"), { estimate: plenty });
    await forgetStudy(db, gone);
    expect((await db.studies.toArray()).map((s) => s.id)).toEqual([kept]);
    expect((await db.files.toArray()).map((f) => f.studyId)).toEqual([kept]);
  });

  it("is emptied at sign-out", async () => {
    await enqueueStudy(db, candidate([3, 4]), { estimate: plenty });
    await clearQueue(db);
    expect(await db.studies.count()).toBe(0);
    expect(await db.files.count()).toBe(0);
  });
});
