import { describe, expect, it } from "vitest";
import { homeOf, mayOpen, pagesFor } from "./roles";

describe("the pages of each role", () => {
  it("shows each role only the pages its API calls allow", () => {
    expect(pagesFor("clinician").map((p) => p.label)).toEqual(["Upload", "My uploads", "Sessions"]);
    expect(pagesFor("radiologist").map((p) => p.label)).toEqual(["Worklist", "Upload", "My uploads", "Sessions"]);
    expect(pagesFor("admin").map((p) => p.label)).toEqual(["Assignment", "Uploads", "Users", "Audit log", "PACS targets", "Statistics", "Sessions"]);
  });

  it("lands each role on its first page", () => {
    expect(homeOf("clinician")).toBe("/");
    expect(homeOf("radiologist")).toBe("/worklist");
    expect(homeOf("admin")).toBe("/admin/assignment");
  });

  it("refuses a typed address of another role's area, pages or not", () => {
    expect(mayOpen("clinician", "/worklist")).toBe(false);
    expect(mayOpen("clinician", "/worklist/0b9e8a4e-1111-4222-8333-444455556666")).toBe(false);
    expect(mayOpen("clinician", "/admin/assignment")).toBe(false);
    expect(mayOpen("radiologist", "/admin/users")).toBe(false);
    expect(mayOpen("admin", "/")).toBe(false);
    expect(mayOpen("admin", "/uploads")).toBe(false);
    expect(mayOpen("admin", "/worklist")).toBe(false);
    expect(mayOpen("clinician", "/admin/targets")).toBe(false);
    expect(mayOpen("radiologist", "/admin/targets")).toBe(false);
    expect(mayOpen("clinician", "/admin/stats")).toBe(false);
    expect(mayOpen("admin", "/admin/stats")).toBe(true);
  });

  it("opens a role's own pages, and does not take a prefix of a word for an area", () => {
    expect(mayOpen("radiologist", "/worklist/abc")).toBe(true);
    expect(mayOpen("radiologist", "/uploads")).toBe(true);
    expect(mayOpen("clinician", "/")).toBe(true);
    expect(mayOpen("admin", "/admin/assignment")).toBe(true);
    expect(mayOpen("admin", "/admin/targets")).toBe(true);
    for (const role of ["clinician", "radiologist", "admin"] as const) expect(mayOpen(role, "/sessions")).toBe(true);
    expect(mayOpen("clinician", "/administrative")).toBe(true);
  });
});
