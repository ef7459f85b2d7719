// The administrator's users: create an account (its temporary password shown once), every
// account with its role and state; change the role, reset two-step sign-in, disable (every
// session ends at once) and enable; see a user's sessions and end one or all.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useId, useState, type FormEvent } from "react";
import { SessionList } from "../../components/session-list";
import { Alert, Button, Card, Field, SecondaryButton } from "../../components/ui";
import type { Schemas } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import {
  changeRole,
  createUser,
  endSession,
  endSessions,
  newTemporaryPassword,
  resetTotp,
  setUserActive,
  usernameProblem,
  userSessionsOptions,
  usersOptions,
} from "./api";

type User = Schemas["AdminUserRead"];

const ROLE: Record<Schemas["Role"], string> = { clinician: "Clinician", radiologist: "Radiologist", admin: "Administrator" };
const ROLES: Schemas["Role"][] = ["clinician", "radiologist", "admin"];

function NewUser() {
  const queryClient = useQueryClient();
  const roleId = useId();
  const [username, setUsername] = useState("");
  const [email, setEmail] = useState("");
  const [role, setRole] = useState<Schemas["Role"]>("clinician");
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<{ username: string; password: string | null } | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setCreated(null);
    const problem = usernameProblem(username.trim());
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const user = await createUser({ username: username.trim(), role, email: email.trim() || null });
      setCreated({ username: user.username, password: user.temporary_password ?? null });
      setUsername("");
      setEmail("");
      await queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card>
      <h2 className="text-lg font-semibold">New account</h2>
      <form aria-label="New account" className="mt-2 grid grid-cols-1 gap-3 sm:grid-cols-4 sm:items-end" onSubmit={(e) => void submit(e)}>
        <Field label="Username" value={username} onChange={(e) => setUsername(e.target.value)} autoComplete="off" required />
        <Field label="Email (optional)" type="email" value={email} onChange={(e) => setEmail(e.target.value)} autoComplete="off" />
        <div className="flex flex-col gap-1">
          <label htmlFor={roleId} className="text-sm font-medium">
            Role
          </label>
          <select id={roleId} className="rounded-md border border-slate-400 bg-white px-3 py-2" value={role} onChange={(e) => setRole(e.target.value as Schemas["Role"])}>
            {ROLES.map((r) => (
              <option key={r} value={r}>
                {ROLE[r]}
              </option>
            ))}
          </select>
        </div>
        <Button type="submit" disabled={busy}>
          Create
        </Button>
      </form>
      {error && <Alert>{error}</Alert>}
      {created && (
        <p role="status" className="mt-2 rounded-md border border-green-300 bg-green-50 px-3 py-2 text-green-900">
          Account {created.username} created.
          {created.password && (
            <>
              {" "}
              Temporary password (shown once; they choose their own at the first sign-in): <code data-testid="temporary-password">{created.password}</code>
            </>
          )}
        </p>
      )}
    </Card>
  );
}

export function UsersPage() {
  const users = useQuery(usersOptions());
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Users</h1>
      <NewUser />
      {users.error && <Alert>{describeError(users.error)}</Alert>}
      {users.data && (
        <div className="overflow-x-auto">
          <table className="w-full border-collapse bg-white text-left">
            <caption className="sr-only">Users</caption>
            <thead>
              <tr className="border-b border-slate-300">
                <th scope="col" className="p-2">
                  Username
                </th>
                <th scope="col" className="p-2">
                  Role
                </th>
                <th scope="col" className="p-2">
                  Two-step sign-in
                </th>
                <th scope="col" className="p-2">
                  State
                </th>
                <th scope="col" className="p-2">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {users.data.items.map((user) => (
                <UserRow key={user.id} user={user} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function UserRow({ user }: { user: User }) {
  const queryClient = useQueryClient();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const roleId = useId();
  const sessionsId = useId();
  const [password, setPassword] = useState<string | null>(null);
  const [showSessions, setShowSessions] = useState(false);

  async function act(action: () => Promise<unknown>) {
    setBusy(true);
    setError(null);
    try {
      await action();
      // The user's list and their sessions (key ["admin", "users", id, "sessions"]).
      await queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <tr className="border-b border-slate-200" data-testid="user-row" data-active={user.is_active}>
        <th scope="row" className="p-2 font-medium">
          {user.username}
        </th>
        <td className="p-2">
          <label htmlFor={roleId} className="sr-only">
            Role of {user.username}
          </label>
          <select
            id={roleId}
            className="rounded-md border border-slate-400 bg-white px-2 py-1"
            value={user.role}
            disabled={busy}
            onChange={(e) => void act(() => changeRole(user.id, e.target.value as Schemas["Role"]))}
          >
            {ROLES.map((role) => (
              <option key={role} value={role}>
                {ROLE[role]}
              </option>
            ))}
          </select>
        </td>
        <td className="p-2">
          {user.totp_enabled ? "On" : "Off"}
          {user.totp_enabled && (
            <SecondaryButton
              className="ml-2"
              disabled={busy}
              aria-label={`Reset two-step sign-in of ${user.username}`}
              onClick={() => {
                if (window.confirm(`Reset the two-step sign-in of ${user.username}? Their sessions end; they set it up again at the next sign-in.`)) {
                  void act(() => resetTotp(user.id));
                }
              }}
            >
              Reset
            </SecondaryButton>
          )}
        </td>
        <td className="p-2">
          {user.is_active ? "Active" : "Disabled"}
          {user.must_change_password ? " · must change password" : ""}
        </td>
        <td className="p-2">
          <SecondaryButton onClick={() => void act(() => setUserActive(user.id, !user.is_active))} disabled={busy} aria-label={`${user.is_active ? "Disable" : "Enable"} ${user.username}`}>
            {user.is_active ? "Disable" : "Enable"}
          </SecondaryButton>
          <SecondaryButton
            className="ml-2"
            disabled={busy}
            aria-label={`New password for ${user.username}`}
            onClick={() => {
              if (window.confirm(`Give ${user.username} a new temporary password? Their sessions end.`)) {
                void act(async () => setPassword((await newTemporaryPassword(user.id)).temporary_password ?? null));
              }
            }}
          >
            New password
          </SecondaryButton>
          <SecondaryButton
            className="ml-2"
            aria-expanded={showSessions}
            aria-controls={sessionsId}
            aria-label={`Sessions of ${user.username}`}
            onClick={() => setShowSessions(!showSessions)}
          >
            Sessions
          </SecondaryButton>
          {password && (
            <p role="status" className="mt-1">
              Temporary password (shown once): <code data-testid="temporary-password">{password}</code>
            </p>
          )}
          {error && <Alert>{error}</Alert>}
        </td>
      </tr>
      {showSessions && (
        <tr id={sessionsId} className="border-b border-slate-200 bg-slate-50">
          <td colSpan={5} className="p-2">
            <UserSessions user={user} busy={busy} act={act} />
          </td>
        </tr>
      )}
    </>
  );
}

function UserSessions({ user, busy, act }: { user: User; busy: boolean; act: (action: () => Promise<unknown>) => Promise<void> }) {
  const sessions = useQuery(userSessionsOptions(user.id));
  const count = sessions.data?.length ?? 0;
  return (
    <section aria-label={`Sessions of ${user.username}`} className="flex flex-col gap-2">
      <div className="flex flex-wrap items-center gap-2">
        <h2 className="font-semibold">
          Sessions of {user.username} ({sessions.data ? count : "…"})
        </h2>
        {count > 0 && (
          <SecondaryButton
            disabled={busy}
            aria-label={`End all sessions of ${user.username}`}
            onClick={() => {
              if (window.confirm(`End every session of ${user.username}? They must sign in again everywhere.`)) void act(() => endSessions(user.id));
            }}
          >
            End all
          </SecondaryButton>
        )}
      </div>
      {sessions.error && <Alert>{describeError(sessions.error)}</Alert>}
      {sessions.data && <SessionList sessions={sessions.data} label={`Session list of ${user.username}`} busy={busy} onEnd={(s) => void act(() => endSession(user.id, s.id))} />}
    </section>
  );
}
