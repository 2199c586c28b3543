// The app's dmTools.ts against dmforge's Python, run with node's test runner by tests/test_tool_contract.py.
// That test puts beside this file: dmTools.ts made from the golden registry, dungeonMasterModel.ts with
// toolResultRole 'user' and the default config's real completion parameters, and contract.json with
// Python's answers to the golden cases (tests/golden/tool_calls.json) and to the system-message cases.
import { dungeonMasterModel } from './dungeonMasterModel';
import {
  checkCall,
  DmCallSyntaxError,
  dmStopTokens,
  dmTemplateMessages,
  dmToolRegistry,
  dungeonMasterSystemMessage,
  findCalls,
  formatCall,
  isKnownTool,
  parseCall,
  runDmTurn,
  scanBrackets,
} from './dmTools';
import type { DmBracket, DmCompletionRequest, DmContext, DmMessage, DmSystemFields, DmToolCall } from './dmTools';

// The few Node APIs used, declared here rather than with @types/node (which slows every compile).
type Assert = {
  deepEqual(actual: unknown, expected: unknown, message?: string): void;
  equal(actual: unknown, expected: unknown, message?: string): void;
  ok(value: unknown, message?: string): void;
  match(text: string, pattern: RegExp): void;
  throws(block: () => unknown, expected: RegExp | object | Function): void;
  rejects(promise: Promise<unknown>, expected: RegExp | object): Promise<void>;
};
declare function require(name: 'node:test'): { test(name: string, body: () => void | Promise<void>): void };
declare function require(name: 'node:assert'): { strict: Assert };
declare function require(name: 'node:fs'): { readFileSync(path: string, encoding: 'utf8'): string };
declare const process: { env: Record<string, string | undefined> };
const { test } = require('node:test');
const assert = require('node:assert').strict;
const { readFileSync } = require('node:fs');

type GoldenBracket = DmBracket & { canonical?: string; known?: boolean; problems?: string[] };
type Contract = {
  cases: Array<{ name: string; text: string; limit: number | null; brackets: GoldenBracket[] }>;
  parse: Array<{ name: string; text: string; call: DmToolCall | null; error?: string }>;
  systemCases: Array<{ fields: DmSystemFields; content: string }>;
  toolNames: string[];
};

const contract = JSON.parse(readFileSync(process.env['DMFORGE_CONTRACT'] ?? 'contract.json', 'utf8')) as Contract;

/** A bracket's own fields: what scanBrackets returns, without the golden file's checks of its call. */
function scanned(b: DmBracket): DmBracket {
  return { kind: b.kind, text: b.text, line: b.line, column: b.column, call: b.call, error: b.error };
}

for (const c of contract.cases) {
  test(`golden: ${c.name}`, () => {
    assert.deepEqual(scanBrackets(c.text, c.limit).map(scanned), c.brackets.map(scanned));
    for (const b of c.brackets) {
      if (b.call === null) continue;
      assert.equal(formatCall(b.call), b.canonical);
      assert.equal(isKnownTool(b.call.name), b.known, b.call.name);
      assert.deepEqual(checkCall(b.call), b.problems, b.text.slice(0, 80));
    }
    if (c.limit === null) {
      assert.deepEqual(findCalls(c.text), c.brackets.flatMap((b) => (b.kind === 'call' && b.call ? [b.call] : [])));
    }
  });
}

for (const p of contract.parse) {
  test(`parse: ${p.name}`, () => {
    if (p.call !== null) assert.deepEqual(parseCall(p.text), p.call);
    else assert.throws(() => parseCall(p.text), { name: 'DmCallSyntaxError', message: p.error });
    if (p.call === null) assert.throws(() => parseCall(p.text), DmCallSyntaxError);
  });
}

test('the registry, the stop tokens and the system message come from the deploy', () => {
  assert.deepEqual(Object.keys(dmToolRegistry.tools).sort(), contract.toolNames);
  assert.deepEqual(dmStopTokens, dungeonMasterModel.stop);
  for (const s of contract.systemCases) {
    assert.deepEqual(dungeonMasterSystemMessage(s.fields), { role: 'system', content: s.content });
  }
  assert.throws(
    () => dungeonMasterSystemMessage({ location: 'L', party: 'P' }),
    /uses \{world\}: pass world to dungeonMasterSystemMessage/,
  );
});

/** A stand-in for Cactus's LlamaContext that records every request, and mutates `stop` as Cactus does. */
function fakeContext(replies: string[], tokensPerCharacter = 0.25) {
  const sent: DmCompletionRequest[] = [];
  const tokenized: string[] = [];
  const context: DmContext = {
    tokenize: async (text) => {
      tokenized.push(text);
      return { tokens: new Array<number>(Math.ceil(text.length * tokensPerCharacter)).fill(1) };
    },
    completion: async (params, onToken) => {
      sent.push(JSON.parse(JSON.stringify(params)) as DmCompletionRequest);
      params.stop.push('<|extra|>'); // Cactus appends the chat template's additional stop words to `stop`
      const text = replies.shift() ?? 'The end.';
      onToken?.({ token: text });
      return { text: `  ${text}\n` };
    },
  };
  return { context, sent, tokenized };
}

function withoutMessages(params: DmCompletionRequest): Record<string, unknown> {
  return Object.fromEntries(Object.entries(params).filter(([key]) => key !== 'messages'));
}

const system = { role: 'system', content: 'You are the DM.' };
const player = { role: 'user', content: 'Ana: I search the room.' };

test('runDmTurn sends the full history, system first, and feeds the results back in the user role', async () => {
  const { context, sent } = fakeContext(['You find a door. [roll: perception]', 'Behind it, stairs.']);
  const ran: DmToolCall[] = [];
  const tokens: string[] = [];
  const turn = await runDmTurn(context, [system, player], {
    runTool: async (call) => {
      ran.push(call);
      return '14';
    },
    onToken: (data) => tokens.push(data.token),
  });
  const reply = { role: 'assistant', content: 'You find a door. [roll: perception]' };
  assert.equal(sent.length, 2);
  assert.deepEqual(sent[0]?.messages, [system, player]);
  assert.deepEqual(sent[1]?.messages, [
    system,
    player,
    reply,
    { role: 'user', content: 'Tool results:\n[roll: perception] => 14' },
  ]);
  assert.deepEqual(turn.messages, [
    reply,
    { role: 'tool', content: '[roll: perception] => 14' },
    { role: 'assistant', content: 'Behind it, stairs.' },
  ]);
  assert.deepEqual(turn.calls, [{ call: { name: 'roll', positional: ['perception'], keywords: [] }, result: '14' }]);
  assert.deepEqual(ran, [{ name: 'roll', positional: ['perception'], keywords: [] }]);
  assert.deepEqual(tokens, ['You find a door. [roll: perception]', 'Behind it, stairs.']);
  // Every sampler field and the grammar, exactly as evaluated, on every call; what Cactus pushed into
  // `stop` stayed in that call's copy.
  for (const params of sent) assert.deepEqual(withoutMessages(params), dungeonMasterModel.completion);
  assert.ok(typeof sent[0]?.grammar === 'string' && sent[0].grammar.length > 0);
  assert.deepEqual(dungeonMasterModel.completion.stop, dungeonMasterModel.stop);
});

test('runDmTurn stops after maxToolRounds replies, 3 by default', async () => {
  const calling = () => ['[roll: perception]', '[roll: insight]', '[roll: stealth]', '[initiative]'];
  const two = fakeContext(calling());
  const turn = await runDmTurn(two.context, [system, player], { runTool: () => '12', maxToolRounds: 2 });
  assert.equal(two.sent.length, 2);
  assert.deepEqual(turn.messages.map((m) => m.role), ['assistant', 'tool', 'assistant', 'tool']);
  const three = fakeContext(calling());
  const byDefault = await runDmTurn(three.context, [system, player], { runTool: () => '12' });
  assert.equal(three.sent.length, 3);
  assert.equal(byDefault.calls.length, 3);
  await assert.rejects(runDmTurn(three.context, [system, player], { runTool: () => '', maxToolRounds: 0 }), /at least 1/);
});

test('a throwing runTool, an unknown tool and a broken call become error results', async () => {
  const { context, sent } = fakeContext(['[roll: perception] [cast: fireball] [roll: percepton] [constructor] [roll: insight] [initiative]']);
  const ran: string[] = [];
  const turn = await runDmTurn(context, [system, player], {
    runTool: (call) => {
      ran.push(formatCall(call));
      if (call.name === 'initiative') return 'Ana 17\nBo 9';
      if (call.positional[0] === 'insight') throw 'no dice'; // not an Error: apps throw strings too
      throw new Error('the dice fell off the table');
    },
  });
  const broken = checkCall({ name: 'roll', positional: ['percepton'], keywords: [] })[0];
  assert.match(broken ?? '', /Did you mean `perception`\?$/);
  assert.deepEqual(turn.calls.map((c) => c.result), [
    'error: Error: the dice fell off the table',
    'error: unknown tool cast',
    `error: ${broken}`,
    'error: unknown tool constructor',
    'error: string: no dice',
    'Ana 17 Bo 9',
  ]);
  assert.deepEqual(ran, ['[roll: perception]', '[roll: insight]', '[initiative]'], 'only valid calls of known tools run');
  assert.equal(sent.length, 2, 'the DM continues after the results');
  const results = sent[1]?.messages[sent[1].messages.length - 1];
  assert.equal(results?.content.split('\n').length, 1 + 6, 'the prefix line, then one line per call');
});

test('runDmTurn refuses a history that does not start with the system message', async () => {
  const { context } = fakeContext([]);
  await assert.rejects(runDmTurn(context, [player], { runTool: () => '' }), /needs the system message first/);
  await assert.rejects(runDmTurn(context, [], { runTool: () => '' }), /dungeonMasterSystemMessage/);
});

test('the history is cut to the context window, and each message is tokenized once', async () => {
  // One token a character. Budget: n_ctx less n_predict less the reply header.
  const budget = dungeonMasterModel.n_ctx - dungeonMasterModel.completion.n_predict - dungeonMasterModel.replyHeaderTokens;
  const old: DmMessage[] = [
    { role: 'user', content: 'U'.repeat(budget - 800) }, // too long to fit beside the newer messages
    { role: 'assistant', content: 'A'.repeat(800) },
  ];
  const { context, sent, tokenized } = fakeContext(['Fine. [roll: insight]', 'Done.'], 1);
  const counts = new Map<string, number>();
  await runDmTurn(context, [system, ...old, { role: 'user', content: 'now' }], { runTool: () => '3', tokenCounts: counts });
  assert.deepEqual(sent[0]?.messages.map((m) => m.role), ['system', 'assistant', 'user']);
  assert.equal(sent[0]?.messages[0]?.content, system.content);
  assert.equal(new Set(tokenized).size, tokenized.length, 'no message is tokenized twice');
  assert.equal(counts.get('A'.repeat(800)), 800);
});

test('tool results keep the tool role when the template has one', () => {
  const messages = [system, { role: 'tool', content: '[initiative] => Ana 17' }];
  assert.deepEqual(dmTemplateMessages(messages, { role: 'tool', prefix: '' }), messages);
  assert.deepEqual(dmTemplateMessages(messages)[1], { role: 'user', content: 'Tool results:\n[initiative] => Ana 17' });
});
