// SHA-256 of a whole file off the main thread: small files at once, large ones streamed in
// slices (a 1 GB file never needs 1 GB of memory).
import { createSHA256 } from "hash-wasm";

export interface HashRequest {
  id: number;
  file: Blob;
}
export interface HashResponse {
  id: number;
  sha256: string | null;
}

const SLICE = 4 << 20;
/** Up to this size a file is hashed whole by the browser's own SHA-256 (native, several
 * times faster than WebAssembly); larger ones are streamed through hash-wasm. */
const WHOLE = 64 << 20;

function hex(buffer: ArrayBuffer): string {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

self.onmessage = async (event: MessageEvent<HashRequest>) => {
  const { id, file } = event.data;
  try {
    if (file.size <= WHOLE) {
      const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
      self.postMessage({ id, sha256: hex(digest) } satisfies HashResponse);
      return;
    }
    const hasher = await createSHA256();
    for (let offset = 0; offset < file.size; offset += SLICE) {
      hasher.update(new Uint8Array(await file.slice(offset, offset + SLICE).arrayBuffer()));
    }
    self.postMessage({ id, sha256: hasher.digest("hex") } satisfies HashResponse);
  } catch {
    self.postMessage({ id, sha256: null } satisfies HashResponse);
  }
};
