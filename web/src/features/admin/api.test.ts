import { describe, expect, it } from "vitest";
import { parseModalities } from "./api";

describe("the modalities an administrator types", () => {
  it("reads codes separated by commas or spaces, upper case, each once", () => {
    expect(parseModalities("ct, MR  us;ct")).toEqual({ modalities: ["CT", "MR", "US"], invalid: [] });
    expect(parseModalities("   ")).toEqual({ modalities: [], invalid: [] });
  });

  it("sets apart what is not a DICOM code", () => {
    expect(parseModalities("CT, M-R, X.RAY, DX_2")).toEqual({ modalities: ["CT", "DX_2"], invalid: ["M-R", "X.RAY"] });
  });
});
