import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ApiError } from "../../lib/api/errors";
import { DraftSaver, type DraftState } from "./draft-saver";

interface Deferred {
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** A save whose every call waits until the test settles it. */
function controlledSave() {
  const calls: { value: string; deferred: Deferred }[] = [];
  const save = (value: string) =>
    new Promise<void>((resolve, reject) => {
      calls.push({ value, deferred: { resolve, reject } });
    });
  return { calls, save };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

describe("the report's draft, saved as the radiologist types", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("sends one save per pause in typing, with the last text", async () => {
    const { calls, save } = controlledSave();
    const states: DraftState[] = [];
    const saver = new DraftSaver({ save, delayMs: 800, onState: (s) => states.push(s) });
    saver.change("N");
    vi.advanceTimersByTime(300);
    saver.change("No");
    vi.advanceTimersByTime(300);
    saver.change("No acute");
    vi.advanceTimersByTime(799);
    expect(calls).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(calls.map((c) => c.value)).toEqual(["No acute"]);
    expect(saver.dirty).toBe(true);
    calls[0]!.deferred.resolve();
    await settle();
    expect(states.at(-1)).toBe("saved");
    expect(saver.dirty).toBe(false);
  });

  it("sends what was typed during a save after it, never two saves at once", async () => {
    const { calls, save } = controlledSave();
    const saver = new DraftSaver({ save, delayMs: 100, onState: () => undefined });
    saver.change("a");
    vi.advanceTimersByTime(100);
    saver.change("ab");
    vi.advanceTimersByTime(100); // the first save is still in flight: the second waits
    expect(calls.map((c) => c.value)).toEqual(["a"]);
    calls[0]!.deferred.resolve();
    await settle();
    expect(calls.map((c) => c.value)).toEqual(["a", "ab"]);
  });

  it("keeps the text when the network is gone and sends it when asked again (back online)", async () => {
    const { calls, save } = controlledSave();
    const states: DraftState[] = [];
    const saver = new DraftSaver({ save, delayMs: 100, onState: (s) => states.push(s) });
    saver.change("offline text");
    vi.advanceTimersByTime(100);
    calls[0]!.deferred.reject(new TypeError("Failed to fetch"));
    await settle();
    expect(states.at(-1)).toBe("offline");
    expect(saver.dirty).toBe(true);
    saver.retry();
    expect(calls.map((c) => c.value)).toEqual(["offline text", "offline text"]);
    calls[1]!.deferred.resolve();
    await settle();
    expect(states.at(-1)).toBe("saved");
    expect(saver.dirty).toBe(false);
  });

  it("does not send again what the gateway refused, and says so", async () => {
    const { calls, save } = controlledSave();
    const seen: { state: DraftState; error?: unknown }[] = [];
    const saver = new DraftSaver({ save, delayMs: 100, onState: (state, error) => seen.push({ state, error }) });
    saver.change("too late");
    vi.advanceTimersByTime(100);
    const refusal = new ApiError(409, "report_signed", "signed");
    calls[0]!.deferred.reject(refusal);
    await settle();
    expect(seen.at(-1)).toEqual({ state: "failed", error: refusal });
    saver.retry();
    expect(calls).toHaveLength(1);
  });

  it("sends at once on flush, and nothing after stop", async () => {
    const { calls, save } = controlledSave();
    const saver = new DraftSaver({ save, delayMs: 10_000, onState: () => undefined });
    saver.change("now");
    const flushed = saver.flush();
    expect(calls.map((c) => c.value)).toEqual(["now"]);
    calls[0]!.deferred.resolve();
    await flushed;
    saver.stop();
    saver.change("after");
    vi.advanceTimersByTime(20_000);
    expect(calls).toHaveLength(1);
  });
});
