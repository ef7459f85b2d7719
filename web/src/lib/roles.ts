// What each role may open in the app. The gateway's policy table (relaypacs/auth/policy.py)
// decides who may call what; the app shows a role only the pages whose calls it is allowed, and
// follows what `GET /auth/me` says of the signed-in user's role.
import type { Schemas } from "./api/client";

export type Role = Schemas["Role"];

export interface PageLink {
  to: string;
  label: string;
  /** The roles the page's API calls allow (policy.py). */
  roles: readonly Role[];
}

/** Every page of the signed-in frame, in the order of the navigation. */
export const PAGES: readonly PageLink[] = [
  // PUT /reports/{id}/draft, .../sign, .../amend: radiologists only.
  { to: "/worklist", label: "Worklist", roles: ["radiologist"] },
  // POST /uploads, GET /uploads: clinicians and radiologists (administrators do not upload).
  { to: "/", label: "Upload", roles: ["clinician", "radiologist"] },
  { to: "/uploads", label: "My uploads", roles: ["clinician", "radiologist"] },
  // POST /admin/reports/{id}/assign, GET /admin/radiologists: administrators only.
  { to: "/admin/assignment", label: "Assignment", roles: ["admin"] },
  // GET /admin/uploads, .../retry, .../cancel: administrators only.
  { to: "/admin/uploads", label: "Uploads", roles: ["admin"] },
  // GET /admin/users, .../enable, .../disable: administrators only.
  { to: "/admin/users", label: "Users", roles: ["admin"] },
  // GET /admin/audit, GET /admin/audit/export: administrators only.
  { to: "/admin/audit", label: "Audit log", roles: ["admin"] },
  // GET /admin/targets: administrators only.
  { to: "/admin/targets", label: "PACS targets", roles: ["admin"] },
  // GET /admin/stats: administrators only.
  { to: "/admin/stats", label: "Statistics", roles: ["admin"] },
  // GET /auth/sessions, DELETE /auth/sessions/{id}: every role, its own.
  { to: "/sessions", label: "Sessions", roles: ["clinician", "radiologist", "admin"] },
];

/** The pages a role sees, in order. */
export function pagesFor(role: Role): PageLink[] {
  return PAGES.filter((page) => page.roles.includes(role));
}

/** Areas whose every path belongs to one role, pages or not (a typed address included). */
const AREAS: readonly { prefix: string; roles: readonly Role[] }[] = [
  { prefix: "/admin", roles: ["admin"] },
  { prefix: "/worklist", roles: ["radiologist"] },
];

/** Whether a role may open the page at `path` (its area, then the longest matching page). */
export function mayOpen(role: Role, path: string): boolean {
  const area = AREAS.find((a) => path === a.prefix || path.startsWith(`${a.prefix}/`));
  if (area && !area.roles.includes(role)) return false;
  const page = [...PAGES]
    .sort((a, b) => b.to.length - a.to.length)
    .find((p) => (p.to === "/" ? path === "/" : path === p.to || path.startsWith(`${p.to}/`)));
  return page === undefined || page.roles.includes(role);
}

/** Where a role lands after signing in. */
export function homeOf(role: Role): string {
  return pagesFor(role)[0]?.to ?? "/";
}
