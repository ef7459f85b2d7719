import { describe, expect, it } from "vitest";
import { describeUserAgent } from "./user-agent";

describe("a session's device", () => {
  it("names the browser and the system", () => {
    expect(describeUserAgent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36")).toBe(
      "Chrome on Linux",
    );
    expect(
      describeUserAgent("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"),
    ).toBe("Safari on iOS");
    expect(describeUserAgent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0")).toBe(
      "Edge on Windows",
    );
    expect(describeUserAgent("relaypacs/0.1 (upload)")).toBe("RelayPACS command line");
  });

  it("says so when it cannot tell", () => {
    expect(describeUserAgent(null)).toBe("unknown device");
    expect(describeUserAgent("")).toBe("unknown device");
    expect(describeUserAgent("curl/8.0")).toBe("curl/8.0");
  });
});
