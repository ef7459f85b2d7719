// The chunk requests of the browser (a chunk's PUT, a chunk batch's POST): XMLHttpRequest, the
// one browser API that reports how much of a request's body went out (fetch reports nothing
// until the answer, and streams a body only over HTTP/2). The engine's stall watchdog is poked
// at each progress event: a link that silently stops is noticed by the bytes that stop moving,
// whatever the chunk's (or the batch's) size.
import { getSession, refreshAccess } from "../../lib/session";
import type { ChunkPut } from "./engine";

/** Statuses whose answer has no body (a Response with one would throw). */
const NO_BODY = new Set([101, 103, 204, 205, 304]);

function xhrPut(put: ChunkPut, token: string | null): Promise<Response> {
  return new Promise((resolve, reject) => {
    if (put.signal.aborted) {
      reject(put.signal.reason);
      return;
    }
    const xhr = new XMLHttpRequest();
    const abort = () => xhr.abort();
    xhr.open(put.method ?? "PUT", put.url);
    for (const [name, value] of Object.entries(put.headers)) xhr.setRequestHeader(name, value);
    if (token !== null) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.onprogress = () => put.progress();
    xhr.onprogress = () => put.progress();
    xhr.onreadystatechange = () => put.progress();
    xhr.onload = () => {
      put.signal.removeEventListener("abort", abort);
      const headers = new Headers();
      // The answer's type, and how long the gateway asks to wait before trying again.
      for (const name of ["Content-Type", "Retry-After"]) {
        const value = xhr.getResponseHeader(name);
        if (value !== null) headers.set(name, value);
      }
      resolve(new Response(NO_BODY.has(xhr.status) ? null : xhr.responseText, { status: xhr.status, headers }));
    };
    xhr.onerror = () => {
      put.signal.removeEventListener("abort", abort);
      reject(new TypeError("Failed to fetch"));
    };
    xhr.onabort = () => reject(put.signal.reason ?? new DOMException("Aborted", "AbortError"));
    put.signal.addEventListener("abort", abort, { once: true });
    // A Blob, not the ArrayBuffer itself: Chromium (156) sends an ArrayBuffer body several times
    // slower, and slows every other chunk's read with it (bench.web_upload: 300 whole-file
    // chunks of 0.5 MB, 0.7 PUTs in flight on average and 18-22 s, against 3.6 and 6.9 s).
    xhr.send(new Blob([put.body]));
  });
}

/** A chunk request with the access token; a 401 refreshes it once (lib/session.ts) and retries,
 * as authFetch does. */
export async function authPutChunk(put: ChunkPut): Promise<Response> {
  const token = getSession().token ?? (await refreshAccess(null));
  const first = await xhrPut(put, token);
  if (first.status !== 401 || token === null) return first;
  const fresh = await refreshAccess(token);
  if (fresh === null) return first;
  return xhrPut(put, fresh);
}
