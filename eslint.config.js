// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";

/** Everything a pure state machine must not touch: I/O, timers, wall clock, ambient randomness. */
const purityRules = {
  "no-restricted-imports": [
    "error",
    {
      patterns: [
        { group: ["node:*"], message: "The consensus core is pure: no node: imports (STYLE.md section 1)." },
        { group: ["fs", "fs/*", "net", "os", "path", "child_process", "timers", "timers/*", "crypto", "worker_threads", "events"], message: "The consensus core is pure: no Node built-ins (STYLE.md section 1)." },
      ],
    },
  ],
  "no-restricted-properties": [
    "error",
    { object: "Math", property: "random", message: "Use the injected seeded PRNG (STYLE.md section 1)." },
    { object: "Date", property: "now", message: "Time exists only as ticks (STYLE.md section 1)." },
    { object: "performance", property: "now", message: "Time exists only as ticks (STYLE.md section 1)." },
    { object: "process", property: "hrtime", message: "Time exists only as ticks (STYLE.md section 1)." },
  ],
  "no-restricted-globals": [
    "error",
    { name: "setTimeout", message: "No timers in the pure core: time is tick()." },
    { name: "setInterval", message: "No timers in the pure core: time is tick()." },
    { name: "setImmediate", message: "No timers in the pure core: time is tick()." },
    { name: "queueMicrotask", message: "No scheduling in the pure core." },
    { name: "process", message: "No process access in the pure core." },
    { name: "require", message: "No dynamic loading in the pure core." },
  ],
  "no-restricted-syntax": [
    "error",
    { selector: "FunctionDeclaration[async=true]", message: "The consensus core is synchronous: no async." },
    { selector: "ArrowFunctionExpression[async=true]", message: "The consensus core is synchronous: no async." },
    { selector: "FunctionExpression[async=true]", message: "The consensus core is synchronous: no async." },
    { selector: "AwaitExpression", message: "The consensus core is synchronous: no await." },
    { selector: "NewExpression[callee.name='Date']", message: "Time exists only as ticks (STYLE.md section 1)." },
  ],
};

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "bench/results/**", "data/**", "coverage/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: "readonly", console: "readonly", Buffer: "readonly", setTimeout: "readonly",
        clearTimeout: "readonly", setInterval: "readonly", clearInterval: "readonly", setImmediate: "readonly",
        URL: "readonly", performance: "readonly", queueMicrotask: "readonly", structuredClone: "readonly",
      },
    },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-non-null-assertion": "off",
    },
  },
  {
    files: ["src/consensus/**/*.ts", "src/projections/apply*.ts"],
    rules: purityRules,
  },
  {
    // The Ready driver does I/O, so it may be async; it still reaches disk, network and time
    // only through its ports (STYLE.md section 1), so every other purity rule stays.
    files: ["src/consensus/driver*.ts"],
    rules: {
      "no-restricted-syntax": [
        "error",
        { selector: "NewExpression[callee.name='Date']", message: "Time comes from the Clock port." },
      ],
    },
  },
);
