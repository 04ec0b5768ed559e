// Runs one turn through the reference AG-UI client (@ag-ui/client's HttpAgent) and prints what
// it saw as one JSON line: the events, the problems our own verifier found in their order, the
// messages the client assembled, and the error runAgent raised, if any.
//
// Usage: node tests/agui_client.cjs '{"baseUrl": ..., "token": ..., "threadId": ..., "prompt": ...,
//                                      "cancelOnTool": "sales_report"}'
// NODE_PATH must point at the node_modules that holds @ag-ui/client (.run/ag-ui-client/node_modules).

const { HttpAgent } = require("@ag-ui/client");

/** Our own check of the protocol's ordering rules, independent of the client's built-in one. */
function verify(events, threadId, runId) {
  const problems = [];
  const openSteps = new Set();
  const calls = new Map();  // toolCallId -> "open" | "ended" | "answered"
  let message = null;
  let ended = false;
  events.forEach((event, i) => {
    const where = `#${i} ${event.type}`;
    if (ended) problems.push(`${where}: after the run ended`);
    if (i === 0 && event.type !== "RUN_STARTED") problems.push(`${where}: the first event is not RUN_STARTED`);
    switch (event.type) {
      case "RUN_STARTED":
        if (i !== 0) problems.push(`${where}: a second RUN_STARTED`);
        if (event.threadId !== threadId || event.runId !== runId) problems.push(`${where}: wrong thread or run id`);
        break;
      case "STEP_STARTED":
        if (openSteps.has(event.stepName)) problems.push(`${where}: step ${event.stepName} already open`);
        openSteps.add(event.stepName);
        break;
      case "STEP_FINISHED":
        if (!openSteps.delete(event.stepName)) problems.push(`${where}: step ${event.stepName} was not open`);
        break;
      case "TOOL_CALL_START":
        if (calls.has(event.toolCallId)) problems.push(`${where}: call ${event.toolCallId} started twice`);
        calls.set(event.toolCallId, "open");
        break;
      case "TOOL_CALL_ARGS":
        if (calls.get(event.toolCallId) !== "open") problems.push(`${where}: args for a call that is not open`);
        break;
      case "TOOL_CALL_END":
        if (calls.get(event.toolCallId) !== "open") problems.push(`${where}: end of a call that is not open`);
        calls.set(event.toolCallId, "ended");
        break;
      case "TOOL_CALL_RESULT":
        if (calls.get(event.toolCallId) !== "ended") problems.push(`${where}: result of a call that did not end`);
        calls.set(event.toolCallId, "answered");
        break;
      case "TEXT_MESSAGE_START":
        if (message) problems.push(`${where}: a message is already open`);
        message = event.messageId;
        break;
      case "TEXT_MESSAGE_CONTENT":
        if (event.messageId !== message) problems.push(`${where}: content outside its message`);
        if (!event.delta) problems.push(`${where}: empty delta`);
        break;
      case "TEXT_MESSAGE_END":
        if (event.messageId !== message) problems.push(`${where}: end of a message that is not open`);
        message = null;
        break;
      case "RUN_FINISHED":
        if (openSteps.size) problems.push(`${where}: steps still open: ${[...openSteps]}`);
        if (message) problems.push(`${where}: message ${message} still open`);
        if ([...calls.values()].includes("open")) problems.push(`${where}: a tool call is still open`);
        if (event.threadId !== threadId || event.runId !== runId) problems.push(`${where}: wrong thread or run id`);
        ended = true;
        break;
      case "RUN_ERROR":
        if (!event.message) problems.push(`${where}: no message`);
        ended = true;
        break;
      default:
        break;
    }
  });
  if (!ended) problems.push("the run never ended (no RUN_FINISHED or RUN_ERROR)");
  return problems;
}

async function main() {
  const options = JSON.parse(process.argv[2]);
  const runId = options.runId || `run-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const agent = new HttpAgent({
    url: `${options.baseUrl}/api/ag-ui`,
    headers: { Authorization: `Bearer ${options.token}` },
    threadId: options.threadId,
  });
  agent.addMessage({ id: `${runId}-prompt`, role: "user", content: options.prompt });
  const events = [];
  let cancelled = null;
  const subscriber = {
    onEvent({ event }) {
      events.push(event);
    },
    async onToolCallStartEvent({ event }) {
      if (options.cancelOnTool && event.toolCallName === options.cancelOnTool && !cancelled) {
        cancelled = fetch(`${options.baseUrl}/api/sessions/${options.threadId}/messages/${runId}`, {
          method: "DELETE", headers: { Authorization: `Bearer ${options.token}` },
        }).then((response) => response.status);
      }
    },
  };
  let result = null;
  let error = null;
  try {
    result = await agent.runAgent({ runId }, subscriber);
  } catch (exc) {
    error = String(exc && exc.message ? exc.message : exc);
  }
  console.log(JSON.stringify({
    runId,
    events,
    problems: verify(events, options.threadId, runId),
    messages: agent.messages,
    result: result ? result.result ?? null : null,
    error,
    cancelStatus: cancelled ? await cancelled : null,
  }));
}

main().catch((exc) => {
  console.log(JSON.stringify({ fatal: String(exc && exc.stack ? exc.stack : exc) }));
  process.exit(1);
});
