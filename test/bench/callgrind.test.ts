import { expect, it } from 'vitest';
import { categoryOf, countFunctions } from '../../bench/lib/callgrind.js';

// callgrind_annotate --inclusive=no output, as node under callgrind gives it (shortened).
const annotated = `--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                   file:function
--------------------------------------------------------------------------------
300 (30.00%)  ???:0x000000000d156040 [???]
100 (10.00%)  ???:0x000000000d0e8740'2 [???]
150 (15.00%)  ???:Builtins_KeyedLoadIC_Megamorphic [/usr/bin/node]
120 (12.00%)  ???:heap::base::SlotCallbackResult v8::internal::Scavenger::ScavengeObject<v8::internal::FullHeapObjectSlot>(v8::internal::FullHeapObjectSlot) [/usr/bin/node]
 90 ( 9.00%)  ???:v8::internal::JsonStringifier::SerializeString(v8::internal::Handle<v8::internal::String>) [/usr/bin/node]
 80 ( 8.00%)  ???:v8::internal::compiler::GraphReducer::Reduce(v8::internal::compiler::Node*) [/usr/bin/node]
 70 ( 7.00%)  ???:node::StreamBase::WriteBuffer(v8::FunctionCallbackInfo<v8::Value> const&) [/usr/bin/node]
 50 ( 5.00%)  ???:v8::String::WriteUtf8(v8::Isolate*, char*, int, int*, int) const [/usr/bin/node]
 30 ( 3.00%)  ./malloc/./malloc/malloc.c:_int_malloc [/usr/lib/x86_64-linux-gnu/libc.so.6]
`;

it('sorts callgrind_annotate rows into categories and keeps named functions', () => {
  const counts = countFunctions(annotated, 1_000);
  expect(counts.total).toBe(1_000);
  expect(counts.categories).toEqual({
    'JavaScript (JIT-compiled)': 400,
    'V8 builtins': 150,
    'V8 runtime and API': 50,
    'V8 JSON': 90,
    'garbage collection': 120,
    'V8 compiler and parser': 80,
    'Node and libuv (C++)': 70,
    'libc and other': 40, // 30 of malloc and the 10 below the rows' sum
  });
  // JIT-compiled code has only an address, which means nothing in another process: left out.
  expect([...counts.functions.keys()].some((name) => name.includes('0x000000000d'))).toBe(false);
  expect(counts.functions.get('???:Builtins_KeyedLoadIC_Megamorphic [/usr/bin/node]')).toBe(150);
});

it('names the category of the functions the hot path runs into', () => {
  expect(categoryOf('???:v8::internal::(anonymous namespace)::IterateObjectCache(v8::internal::Isolate*) [/usr/bin/node]')).toBe('garbage collection');
  expect(categoryOf('???:v8::internal::JsonParser<unsigned char>::BuildJsonObject() [/usr/bin/node]')).toBe('V8 JSON');
  expect(categoryOf('???:uv__write [/usr/bin/node]')).toBe('Node and libuv (C++)');
  expect(categoryOf('???:v8::internal::Runtime_DateCurrentTime(int, unsigned long*, v8::internal::Isolate*) [/usr/bin/node]')).toBe('V8 runtime and API');
});
