import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
    setupFiles: ["fake-indexeddb/auto"],
    globalSetup: ["test/global-setup.ts", "test/gateway-setup.ts"],
    testTimeout: 20000,
  },
});
