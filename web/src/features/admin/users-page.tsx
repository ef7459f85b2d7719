// The administrator's users: every account with its role and state; disable (every session
// ends at once) and enable.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Alert, SecondaryButton } from "../../components/ui";
import type { Schemas } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { setUserActive, usersOptions } from "./api";

type User = Schemas["AdminUserRead"];

const ROLE: Record<Schemas["Role"], string> = { clinician: "Clinician", radiologist: "Radiologist", admin: "Administrator" };

export function UsersPage() {
  const users = useQuery(usersOptions());
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Users</h1>
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

  async function toggle() {
    setBusy(true);
    setError(null);
    try {
      await setUserActive(user.id, !user.is_active);
      await queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <tr className="border-b border-slate-200" data-testid="user-row" data-active={user.is_active}>
      <th scope="row" className="p-2 font-medium">
        {user.username}
      </th>
      <td className="p-2">{ROLE[user.role]}</td>
      <td className="p-2">{user.totp_enabled ? "On" : "Off"}</td>
      <td className="p-2">
        {user.is_active ? "Active" : "Disabled"}
        {user.must_change_password ? " · must change password" : ""}
      </td>
      <td className="p-2">
        <SecondaryButton onClick={() => void toggle()} disabled={busy} aria-label={`${user.is_active ? "Disable" : "Enable"} ${user.username}`}>
          {user.is_active ? "Disable" : "Enable"}
        </SecondaryButton>
        {error && <Alert>{error}</Alert>}
      </td>
    </tr>
  );
}
