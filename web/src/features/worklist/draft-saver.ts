// The report editor's draft, saved as the radiologist types: each change waits `delayMs` of quiet
// before it goes (one request per pause, not per key), a change made while a save is in flight
// goes after it, and a save that fails for want of a network is kept and sent again when
// `retry()` is called (the page calls it when the browser is back online).

export type DraftState = "saved" | "waiting" | "saving" | "offline" | "failed";

export interface DraftSaverOptions<T> {
  save: (value: T) => Promise<unknown>;
  delayMs: number;
  onState: (state: DraftState, error?: unknown) => void;
  /** Whether a failure is the network's (kept and retried) rather than the gateway's answer. */
  isNetworkError?: (error: unknown) => boolean;
}

export class DraftSaver<T> {
  private readonly options: DraftSaverOptions<T>;
  private pending: { value: T } | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private inFlight: Promise<void> | null = null;
  private stopped = false;

  constructor(options: DraftSaverOptions<T>) {
    this.options = options;
  }

  /** The text changed: save it after a quiet moment. */
  change(value: T): void {
    if (this.stopped) return;
    this.pending = { value };
    this.options.onState("waiting");
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.send();
    }, this.options.delayMs);
  }

  /** Save what is waiting now (before signing, or when leaving the page). */
  async flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.inFlight) await this.inFlight;
    await this.send();
  }

  /** Send again what a lost network kept. */
  retry(): void {
    if (this.pending && !this.timer && !this.inFlight) void this.send();
  }

  /** Whether something typed has not reached the gateway yet. */
  get dirty(): boolean {
    return this.pending !== null || this.inFlight !== null;
  }

  /** Nothing more is sent (the report was signed, or the page closed). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async send(): Promise<void> {
    if (this.inFlight || this.pending === null || this.stopped) return;
    const { value } = this.pending;
    this.pending = null;
    this.options.onState("saving");
    const attempt = this.options.save(value).then(
      () => ({ ok: true as const }),
      (error: unknown) => ({ ok: false as const, error }),
    );
    this.inFlight = attempt.then(() => undefined);
    const result = await attempt;
    this.inFlight = null;
    if (!result.ok) {
      const { error } = result;
      const network = (this.options.isNetworkError ?? ((e) => e instanceof TypeError))(error);
      // Keep the text unless something newer replaced it meanwhile.
      if (network && this.pending === null) this.pending = { value };
      this.options.onState(network ? "offline" : "failed", error);
      return;
    }
    if (this.pending !== null && !this.timer) {
      await this.send(); // typed while the save was in flight
    } else if (this.pending === null) {
      this.options.onState("saved");
    }
  }
}
