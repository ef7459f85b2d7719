// The signed-in state of this tab, for components.
import { useSyncExternalStore } from "react";
import { getSession, subscribe } from "../../lib/session";

export function useAccessToken(): string | null {
  return useSyncExternalStore(subscribe, () => getSession().token);
}

/** What the sign-in said must happen before anything else (kept for this tab's reloads). */
export interface Pending {
  passwordChange: boolean;
  totpEnrolment: boolean;
}

const KEY = "relaypacs-pending";

export function savePending(pending: Pending): void {
  sessionStorage.setItem(KEY, JSON.stringify(pending));
}

export function loadPending(): Pending {
  try {
    const value = JSON.parse(sessionStorage.getItem(KEY) ?? "{}") as Partial<Pending>;
    return { passwordChange: value.passwordChange === true, totpEnrolment: value.totpEnrolment === true };
  } catch {
    return { passwordChange: false, totpEnrolment: false };
  }
}
