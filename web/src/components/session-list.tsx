// A user's live sessions (signed in when, last used, from where, on what), each with a button
// that ends it; the current one is marked and cannot be ended here (signing out does).
import type { Schemas } from "../lib/api/client";
import { describeUserAgent } from "../lib/user-agent";
import { SecondaryButton } from "./ui";

type Session = Schemas["SessionRead"];

export function SessionList({
  sessions,
  label,
  busy,
  onEnd,
}: {
  sessions: Session[];
  label: string;
  busy: boolean;
  onEnd: (session: Session) => void;
}) {
  if (sessions.length === 0) return <p>No session is open.</p>;
  return (
    <ul aria-label={label} className="flex flex-col gap-2">
      {sessions.map((session) => {
        const device = describeUserAgent(session.user_agent);
        const since = new Date(session.created_at).toLocaleString();
        return (
          <li key={session.id} data-testid="session" data-current={session.current} className="flex flex-wrap items-center gap-2 rounded-md border border-slate-200 p-2">
            <span className="grow">
              <span className="font-medium">{device}</span>
              {session.current && <span className="ml-2 rounded border border-blue-800 px-1 text-sm text-blue-900">this device</span>}
              <br />
              <span className="text-sm text-slate-700">
                Signed in {since} · last used {new Date(session.last_used_at).toLocaleString()}
                {session.client_ip ? ` · from ${session.client_ip}` : ""}
              </span>
            </span>
            {!session.current && (
              <SecondaryButton disabled={busy} aria-label={`End the session of ${device} signed in ${since}`} onClick={() => onEnd(session)}>
                End
              </SecondaryButton>
            )}
          </li>
        );
      })}
    </ul>
  );
}
