// The engine of this tab, wired to the browser: the signed-in fetch, the hashing worker, the
// network's comings and goings, Background Sync.
import { useSyncExternalStore } from "react";
import { db } from "../../lib/db";
import { authFetch } from "../../lib/session";
import { UploadEngine, type Progress } from "./engine";
import { hashInWorker } from "./workers";
import { authPutChunk } from "./xhr";

export const SYNC_TAG = "relaypacs-upload";

export const engine = new UploadEngine({
  db,
  fetch: authFetch,
  hash: hashInWorker,
  online: () => navigator.onLine,
  parallel: 6, // a browser opens at most 6 HTTP/1.1 connections to one server
  putChunk: authPutChunk,
});

let wired = false;

/** Start the engine once per tab: now (page load), at `online`, and when the service worker's
 * Background Sync says the network is back. */
export function startUploader(): void {
  if (wired) {
    engine.kick(); // signed in again: what waited for a session goes on
    return;
  }
  wired = true;
  window.addEventListener("offline", () => engine.stopAll());
  window.addEventListener("online", () => engine.kick());
  navigator.serviceWorker?.addEventListener("message", (event: MessageEvent<{ type?: string }>) => {
    if (event.data?.type === "resume-uploads") engine.kick();
  });
  engine.kick();
}

/** Ask for a Background Sync (Chromium): the service worker wakes the app when the network is back. */
export async function requestBackgroundSync(): Promise<void> {
  try {
    const registration = (await navigator.serviceWorker?.ready) as (ServiceWorkerRegistration & { sync?: { register(tag: string): Promise<void> } }) | undefined;
    await registration?.sync?.register(SYNC_TAG);
  } catch {
    // not supported or not allowed: `online` and page loads resume instead
  }
}

export function useProgress(studyId: string): Progress | undefined {
  return useSyncExternalStore(
    (listener) => engine.subscribe(listener),
    () => engine.progressOf(studyId),
  );
}
