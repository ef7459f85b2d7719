// The signed-in user's role, as `GET /auth/me` says it. Kept for this tab so that the app opens
// offline with the same pages (the session's refresh decides again once online).
import { useQuery } from "@tanstack/react-query";
import type { Role } from "../../lib/roles";
import { me } from "./api";

const KEY = "relaypacs-role";
const ROLES: readonly string[] = ["clinician", "radiologist", "admin"];

function stored(): Role | null {
  const value = sessionStorage.getItem(KEY);
  return value !== null && ROLES.includes(value) ? (value as Role) : null;
}

/** The role, or null while it is not known yet. */
export function useRole(token: string | null): Role | null {
  const query = useQuery({
    queryKey: ["me", token !== null],
    queryFn: async () => {
      const user = await me();
      sessionStorage.setItem(KEY, user.role);
      return user;
    },
    enabled: token !== null,
    staleTime: 60_000,
  });
  return query.data?.role ?? stored();
}
