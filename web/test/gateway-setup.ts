// A real gateway for the upload engine's tests: `relaypacs serve` of this checkout (SQLite and
// files in a temporary directory, no PACS, 64 KiB chunks) on a free loopback port, with a
// clinician signed in.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    gateway: { url: string; token: string };
  }
}

const PASSWORD = "engine-test-password-1";

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? done(address.port) : fail(new Error("no port"))));
    });
  });
}

export default async function setup(project: TestProject) {
  const repo = resolve(import.meta.dirname, "../..");
  const relaypacs = join(repo, ".venv", "bin", "relaypacs");
  const dir = mkdtempSync(join(tmpdir(), "relaypacs-engine-"));
  const env: NodeJS.ProcessEnv = {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("RELAYPACS_"))),
    RELAYPACS_DATA_DIR: join(dir, "data"),
    RELAYPACS_CHUNK_SIZE: String(64 * 1024),
  };
  execFileSync(relaypacs, ["users", "create", "engine", "--role", "clinician", "--password-stdin"], {
    env,
    input: `${PASSWORD}\n`,
    cwd: repo,
    stdio: ["pipe", "ignore", "ignore"],
  });
  const port = await freePort();
  const log = openSync(join(dir, "gateway.log"), "a");
  const server: ChildProcess = spawn(relaypacs, ["serve", "--host", "127.0.0.1", "--port", String(port)], {
    env,
    cwd: repo,
    stdio: ["ignore", log, log],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      if ((await fetch(`${url}/api/v1/health`)).ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline || server.exitCode !== null) throw new Error(`the gateway did not start (log: ${dir}/gateway.log)`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const login = await fetch(`${url}/api/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: "engine", password: PASSWORD }),
  });
  const { access_token: token } = (await login.json()) as { access_token: string };
  project.provide("gateway", { url, token });
  return async () => {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  };
}
