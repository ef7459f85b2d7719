import Dexie from "dexie";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QueueDatabase } from "../../lib/db";
import { clearQueue } from "../upload/queue";
import { draftAcknowledged, draftToOpen, forgetDraft, keepDraft, keptDraft } from "./draft-store";

const empty = { findings: "", impression: "" };
const typed = { findings: "Small nodule, 4 mm.", impression: "Follow-up CT." };

let db: QueueDatabase;

beforeEach(() => {
  db = new QueueDatabase(`drafts-${crypto.randomUUID()}`);
});
afterEach(async () => {
  await db.delete();
});

describe("the report draft kept on this device", () => {
  it("survives reopening the database, keyed by report", async () => {
    await keepDraft(db, "r1", typed, empty);
    await keepDraft(db, "r2", { findings: "Other", impression: "" }, empty);
    db.close();
    const reopened = new QueueDatabase(db.name);
    expect(await keptDraft(reopened, "r1")).toMatchObject({ reportId: "r1", ...typed, baseFindings: "", baseImpression: "" });
    expect((await keptDraft(reopened, "r2"))!.findings).toBe("Other");
    expect(await keptDraft(reopened, "r3")).toBeUndefined();
    reopened.close();
  });

  it("keeps only the last change of a report", async () => {
    await keepDraft(db, "r1", { findings: "Small", impression: "" }, empty);
    await keepDraft(db, "r1", typed, empty);
    expect(await db.drafts.count()).toBe(1);
    expect(await keptDraft(db, "r1")).toMatchObject(typed);
  });

  it("is deleted once the gateway acknowledged that text, not an older one", async () => {
    await keepDraft(db, "r1", typed, empty);
    await draftAcknowledged(db, "r1", { findings: "Small", impression: "" }); // an older save
    expect(await keptDraft(db, "r1")).toMatchObject(typed);
    await draftAcknowledged(db, "r1", typed);
    expect(await keptDraft(db, "r1")).toBeUndefined();
  });

  it("is forgotten for one report, and with the upload queue at sign-out", async () => {
    await keepDraft(db, "r1", typed, empty);
    await keepDraft(db, "r2", typed, empty);
    const older = (await keptDraft(db, "r1"))!.savedAt - 1;
    await forgetDraft(db, "r1", older); // a draft typed since the one read is not forgotten
    expect(await keptDraft(db, "r1")).toBeDefined();
    await forgetDraft(db, "r1");
    expect(await keptDraft(db, "r1")).toBeUndefined();
    expect(await keptDraft(db, "r2")).toBeDefined();
    await clearQueue(db);
    expect(await db.drafts.count()).toBe(0);
  });

  it("is added by a version bump: a database of version 1 keeps its queue", async () => {
    const name = `v1-${crypto.randomUUID()}`;
    const old = new Dexie(name);
    old.version(1).stores({ studies: "id, state, createdAt", files: "++id, studyId, [studyId+index]" });
    await old.table("studies").add({ id: "s1", state: "queued", createdAt: 1 });
    old.close();
    const upgraded = new QueueDatabase(name);
    expect((await upgraded.studies.get("s1"))!.state).toBe("queued");
    await keepDraft(upgraded, "r1", typed, empty);
    expect(await keptDraft(upgraded, "r1")).toMatchObject(typed);
    expect(upgraded.verno).toBe(2);
    await upgraded.delete();
  });
});

describe("what the editor opens with", () => {
  const kept = (text: typeof typed, base: typeof typed) => ({
    reportId: "r1",
    ...text,
    baseFindings: base.findings,
    baseImpression: base.impression,
    savedAt: 1,
  });

  it("the kept draft when it was typed over what the gateway still has", () => {
    expect(draftToOpen(kept(typed, empty), empty)).toEqual({ text: typed, base: empty, unsent: true });
  });

  it("the gateway's draft when nothing is kept, or the gateway has the kept text already", () => {
    expect(draftToOpen(undefined, typed)).toEqual({ text: typed, base: typed, unsent: false });
    expect(draftToOpen(kept(typed, empty), typed)).toEqual({ text: typed, base: typed, unsent: false });
  });

  it("the gateway's draft when it changed after the kept one was typed (saved from elsewhere)", () => {
    const elsewhere = { findings: "Written on another device.", impression: "" };
    expect(draftToOpen(kept(typed, empty), elsewhere)).toEqual({ text: elsewhere, base: elsewhere, unsent: false });
  });

  it("offline (the gateway's draft unknown): the kept draft, or nothing to open", () => {
    expect(draftToOpen(kept(typed, empty), null)).toEqual({ text: typed, base: empty, unsent: true });
    expect(draftToOpen(undefined, null)).toBeNull();
  });
});
