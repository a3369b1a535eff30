/**
 * Structured JSON logs in the operations guide's shape:
 *   {"timestamp":"2024-01-15T10:30:00.000Z","level":"INFO","target":"verity_consensus",
 *    "message":"Became leader","fields":{"node_id":1,"view":5,"commit_index":12345}}
 */

import { pino, type Logger } from "pino";

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error"];

/**
 * The root logger has no `target`; make one child per component with `forTarget(root, "verity_x")`
 * (a child of a child would repeat the key).
 */
export function createRootLogger(options: { level: LogLevel; destination?: number }): Logger {
  return pino(
    {
      level: options.level,
      base: null,
      messageKey: "message",
      nestedKey: "fields",
      timestamp: () => `,"timestamp":"${new Date().toISOString()}"`,
      formatters: {
        level: (label) => ({ level: label.toUpperCase() }),
      },
    },
    pino.destination({ fd: options.destination ?? 1, sync: true }),
  );
}

export function forTarget(root: Logger, target: string): Logger {
  return root.child({ target });
}

export function createLogger(options: { level: LogLevel; target: string; destination?: number }): Logger {
  return forTarget(createRootLogger(options), options.target);
}
