// The report editor's unsent draft on this device (IndexedDB, lib/db.ts), so that a reload or a
// closed tab while offline loses nothing: written at each change before the network save,
// deleted once the gateway acknowledged that text, offered again when the editor opens, and
// cleared at sign-out with the upload queue (features/upload/queue.ts: it holds patient data).
import type { LocalDraft, QueueDatabase } from "../../lib/db";

export interface DraftText {
  findings: string;
  impression: string;
}

const same = (a: DraftText, b: DraftText) => a.findings === b.findings && a.impression === b.impression;

/** Keep `text`, typed over the gateway's draft `base`. */
export async function keepDraft(db: QueueDatabase, reportId: string, text: DraftText, base: DraftText): Promise<void> {
  await db.drafts.put({
    reportId,
    findings: text.findings,
    impression: text.impression,
    baseFindings: base.findings,
    baseImpression: base.impression,
    savedAt: Date.now(),
  });
}

/** The gateway acknowledged `text`: forget the kept draft, unless something newer was typed. */
export async function draftAcknowledged(db: QueueDatabase, reportId: string, text: DraftText): Promise<void> {
  await db.transaction("rw", db.drafts, async () => {
    const kept = await db.drafts.get(reportId);
    if (kept && same(kept, text)) await db.drafts.delete(reportId);
  });
}

export function keptDraft(db: QueueDatabase, reportId: string): Promise<LocalDraft | undefined> {
  return db.drafts.get(reportId);
}

/** Forget the kept draft (the report is signed); with `savedAt`, only that one, not a newer. */
export async function forgetDraft(db: QueueDatabase, reportId: string, savedAt?: number): Promise<void> {
  await db.transaction("rw", db.drafts, async () => {
    const kept = await db.drafts.get(reportId);
    if (kept && (savedAt === undefined || kept.savedAt === savedAt)) await db.drafts.delete(reportId);
  });
}

/** What the editor opens with: the kept draft when it is newer than the gateway's (written over
 * what the gateway still has, and different from it), the gateway's otherwise. `server` is null
 * when the gateway cannot be reached (offline): the kept draft then, if any. */
export function draftToOpen(kept: LocalDraft | undefined, server: DraftText | null): { text: DraftText; base: DraftText; unsent: boolean } | null {
  const local = kept && { findings: kept.findings, impression: kept.impression };
  const keptBase = kept && { findings: kept.baseFindings, impression: kept.baseImpression };
  if (server === null) return local && keptBase ? { text: local, base: keptBase, unsent: true } : null;
  if (local && keptBase && same(keptBase, server) && !same(local, server)) return { text: local, base: server, unsent: true };
  return { text: server, base: server, unsent: false };
}
