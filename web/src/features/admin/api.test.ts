import { describe, expect, it } from "vitest";
import { parseModalities, usernameProblem } from "./api";

describe("the modalities an administrator types", () => {
  it("reads codes separated by commas or spaces, upper case, each once", () => {
    expect(parseModalities("ct, MR  us;ct")).toEqual({ modalities: ["CT", "MR", "US"], invalid: [] });
    expect(parseModalities("   ")).toEqual({ modalities: [], invalid: [] });
  });

  it("sets apart what is not a DICOM code", () => {
    expect(parseModalities("CT, M-R, X.RAY, DX_2")).toEqual({ modalities: ["CT", "DX_2"], invalid: ["M-R", "X.RAY"] });
  });
});

describe("a new account's username", () => {
  it("takes what the gateway takes", () => {
    expect(usernameProblem("dr.smith")).toBeNull();
    expect(usernameProblem("a")).toBeNull();
    expect(usernameProblem("j_doe-2@site")).toBeNull();
    expect(usernameProblem("x".repeat(64))).toBeNull();
  });

  it("says what is wrong with what it refuses", () => {
    expect(usernameProblem("")).toBe("Choose a username.");
    expect(usernameProblem("x".repeat(65))).toBe("A username has at most 64 characters.");
    expect(usernameProblem(".hidden")).toMatch(/starts with a letter or a digit/);
    expect(usernameProblem("two words")).toMatch(/starts with a letter or a digit/);
  });
});
