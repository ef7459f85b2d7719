// SHA-256 of a whole file, streamed in slices (a 1 GB file never needs 1 GB of memory), off the
// main thread.
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

self.onmessage = async (event: MessageEvent<HashRequest>) => {
  const { id, file } = event.data;
  try {
    const hasher = await createSHA256();
    for (let offset = 0; offset < file.size; offset += SLICE) {
      hasher.update(new Uint8Array(await file.slice(offset, offset + SLICE).arrayBuffer()));
    }
    self.postMessage({ id, sha256: hasher.digest("hex") } satisfies HashResponse);
  } catch {
    self.postMessage({ id, sha256: null } satisfies HashResponse);
  }
};
