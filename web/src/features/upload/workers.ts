// The workers of the upload: header reading and hashing, so that the page never stalls.
import type { HeaderRequest, HeaderResponse, ReadResult, ZipMember } from "./header.worker";
import type { HashRequest, HashResponse } from "./hash.worker";

type WithoutId<T> = T extends unknown ? Omit<T, "id"> : never;

class Pool<Req extends { id: number }, Res extends { id: number }> {
  private workers: Worker[] = [];
  private next = 0;
  private waiting = new Map<number, (response: Res) => void>();
  private ids = 0;

  constructor(private readonly make: () => Worker, private readonly size: number) {}

  run(request: WithoutId<Req>): Promise<Res> {
    if (this.workers.length === 0) {
      for (let i = 0; i < this.size; i++) {
        const worker = this.make();
        worker.onmessage = (event: MessageEvent<Res>) => {
          this.waiting.get(event.data.id)?.(event.data);
          this.waiting.delete(event.data.id);
        };
        this.workers.push(worker);
      }
    }
    const id = ++this.ids;
    const worker = this.workers[this.next++ % this.workers.length]!;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      worker.postMessage({ ...request, id });
    });
  }
}

const cores = Math.max(1, Math.min(4, (typeof navigator !== "undefined" && navigator.hardwareConcurrency) || 2));

const headers = new Pool<HeaderRequest, HeaderResponse>(
  () => new Worker(new URL("./header.worker.ts", import.meta.url), { type: "module" }),
  cores,
);
const hashers = new Pool<HashRequest, HashResponse>(
  () => new Worker(new URL("./hash.worker.ts", import.meta.url), { type: "module" }),
  cores,
);

/** A file's header, and its SHA-256 when the worker read it whole (null: hashed later). */
export async function readHeaderInWorker(file: File): Promise<{ result: ReadResult; sha256: string | null }> {
  const response = await headers.run({ op: "header", file });
  return response.op === "header" ? response : { result: { ok: false, reason: "unreadable" }, sha256: null };
}

/** The members of a ZIP archive with their headers; null when it is not a readable ZIP. */
export async function readZipInWorker(file: File): Promise<ZipMember[] | null> {
  const response = await headers.run({ op: "zip", file });
  return response.op === "zip" ? response.members : null;
}

export async function hashInWorker(file: Blob): Promise<string> {
  const { sha256 } = await hashers.run({ file });
  if (sha256 === null) throw new Error("the file could not be read");
  return sha256;
}
