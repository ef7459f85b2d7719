// Whether the live notification stream is open: pages poll slowly then, quickly otherwise.
import { useSyncExternalStore } from "react";

type Listener = () => void;
let connected = false;
const listeners = new Set<Listener>();

export function setLiveConnected(value: boolean): void {
  connected = value;
  for (const listener of listeners) listener();
}

export function useLiveConnected(): boolean {
  return useSyncExternalStore(
    (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    () => connected,
  );
}
