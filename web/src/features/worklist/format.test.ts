import { describe, expect, it } from "vitest";
import { isSigned } from "./format";

describe("a report's state", () => {
  it("takes ready and amended for signed", () => {
    expect(isSigned("ready")).toBe(true);
    expect(isSigned("amended")).toBe(true);
    expect(isSigned("assigned")).toBe(false);
    expect(isSigned("pending")).toBe(false);
  });
});
