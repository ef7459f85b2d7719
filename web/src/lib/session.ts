// The access token of this tab, and its refresh serialised across tabs.
//
// The refresh token is an HttpOnly cookie shared by every tab of the gateway's origin, and it
// rotates on each use: two tabs presenting the same one at once would look like token theft
// and end the session (refresh_token_reused). So a refresh runs under a Web Lock held by one
// tab at a time; the new access token is broadcast to the other tabs, and a tab that waited
// for the lock uses the token it received meanwhile instead of refreshing again.

type Listener = () => void;

export interface Session {
  token: string | null;
  /** Bumped at every new token (this tab's or another's) and at sign-out. */
  generation: number;
}

const LOCK = "relaypacs-refresh";
const CHANNEL = "relaypacs-session";

let session: Session = { token: null, generation: 0 };
const listeners = new Set<Listener>();
let inFlight: Promise<string | null> | null = null;

type Message = { type: "token"; token: string } | { type: "signed-out" };

const channel: BroadcastChannel | null =
  typeof BroadcastChannel === "undefined" ? null : new BroadcastChannel(CHANNEL);

function set(token: string | null): void {
  session = { token, generation: session.generation + 1 };
  for (const listener of listeners) listener();
}

channel?.addEventListener("message", (event: MessageEvent<Message>) => {
  if (event.data.type === "token") set(event.data.token);
  else if (event.data.type === "signed-out") set(null);
});

export function getSession(): Session {
  return session;
}

export function subscribe(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** A new access token from a sign-in, shared with the other tabs. */
export function signedIn(token: string): void {
  set(token);
  channel?.postMessage({ type: "token", token } satisfies Message);
}

/** This tab and the others forget the access token. */
export function signedOut(): void {
  set(null);
  channel?.postMessage({ type: "signed-out" } satisfies Message);
}

async function withLock<T>(run: () => Promise<T>): Promise<T> {
  if (typeof navigator !== "undefined" && navigator.locks) {
    return navigator.locks.request(LOCK, { mode: "exclusive" }, run);
  }
  return run();
}

/**
 * A fresh access token through the refresh cookie, or null when the session is over. `stale` is
 * the token that was refused (null: none yet, e.g. at page load); if another tab or call has
 * replaced it meanwhile, that newer token is the answer and no refresh is made.
 */
export function refreshAccess(stale: string | null = session.token): Promise<string | null> {
  inFlight ??= withLock(async () => {
    if (session.token !== null && session.token !== stale) return session.token;
    const response = await fetch("/api/v1/auth/refresh", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    if (!response.ok) {
      if (response.status === 401) signedOut();
      return null;
    }
    const body = (await response.json()) as { access_token?: string | null };
    if (!body.access_token) return null;
    signedIn(body.access_token);
    return body.access_token;
  }).finally(() => {
    inFlight = null;
  });
  return inFlight;
}

/**
 * fetch with the access token; a 401 refreshes it once (serialised, see above) and retries.
 * Used by the typed API client and by the chunk PUTs.
 */
export async function authFetch(input: Request): Promise<Response> {
  const retry = input.clone();
  // Signing in needs no token (and must not try the refresh cookie first).
  const token = session.token ?? (isAuthPath(input.url) ? null : await refreshAccess(null));
  const first = await fetch(withToken(input, token));
  if (first.status !== 401 || token === null || isAuthPath(input.url)) return first;
  const fresh = await refreshAccess(token);
  if (fresh === null) return first;
  return fetch(withToken(retry, fresh));
}

function isAuthPath(url: string): boolean {
  const path = new URL(url, "http://x").pathname;
  return path === "/api/v1/auth/refresh" || path === "/api/v1/auth/login" || path === "/api/v1/auth/totp";
}

function withToken(request: Request, token: string | null): Request {
  if (token === null) return request;
  const headers = new Headers(request.headers);
  headers.set("Authorization", `Bearer ${token}`);
  return new Request(request, { headers });
}
