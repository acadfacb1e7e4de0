// The chat page: plain DOM code over the HTTP API and the roomwire client. No build step:
// the server bundles `roomwire/client` into /assets/roomwire-client.js at start.
import { connect } from '/assets/roomwire-client.js';

const $ = (selector) => document.querySelector(selector);
const API = '/api/v1';
const STATE_TEXT = { connecting: 'connecting…', open: 'live', reconnecting: 'reconnecting…', closed: 'offline' };

/** Everything the page knows; rendering reads it, handlers change it. */
const state = {
  token: sessionStorage.getItem('chat.token'),
  user: JSON.parse(sessionStorage.getItem('chat.user') ?? 'null'),
  client: undefined,
  /** id → conversation, from GET /conversations. */
  conversations: new Map(),
  /** conversation id → unread count. */
  unread: new Map(),
  /** The open conversation's id, its messages by id, and what is being sent. */
  openId: undefined,
  messages: new Map(),
  pending: [],
  online: new Set(),
  welcomed: false,
};

class HttpError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${API}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : undefined;
  if (response.status === 401) logout();
  if (!response.ok) throw new HttpError(response.status, parsed);
  return parsed;
}

const conversationIdOf = (room) => (/^conversation:(\d+)$/.exec(room) ? Number(room.slice('conversation:'.length)) : undefined);

function notice(text) {
  const el = $('#notice');
  el.textContent = text ?? '';
  el.hidden = !text;
}

// ------------------------------------------------------------------ rendering

function renderStatus(clientState) {
  const el = $('#status');
  el.dataset.state = clientState;
  el.textContent = STATE_TEXT[clientState] ?? clientState;
}

function renderConversations() {
  const list = $('#conversations');
  list.replaceChildren(
    ...[...state.conversations.values()].map((conversation) => {
      const item = document.createElement('li');
      item.dataset.id = String(conversation.id);
      item.setAttribute('aria-current', String(conversation.id === state.openId));
      const title = document.createElement('div');
      title.className = 'title';
      title.append(conversation.title);
      const unread = state.unread.get(conversation.id) ?? 0;
      if (unread > 0) {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = String(unread);
        title.append(badge);
      }
      const who = document.createElement('div');
      who.className = 'who';
      who.textContent = conversation.participants.join(', ');
      item.append(title, who);
      item.addEventListener('click', () => openConversation(conversation.id));
      return item;
    }),
  );
  if (state.conversations.size === 0) {
    const empty = document.createElement('li');
    empty.className = 'who';
    empty.textContent = 'No conversations yet: create one below, or ask someone to add you.';
    list.append(empty);
  }
}

function renderHeader() {
  const conversation = state.conversations.get(state.openId);
  if (!conversation) return;
  $('#title').textContent = conversation.title;
  $('#participants').replaceChildren(
    ...conversation.participants.map((id) => {
      const span = document.createElement('span');
      span.textContent = id;
      span.dataset.online = String(id === state.user.id || state.online.has(id));
      return span;
    }),
  );
}

function renderMessages() {
  const list = $('#messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = [...state.messages.values()]
    .sort((a, b) => a.id - b.id)
    .map((message) => messageItem(message.from, message.content, new Date(message.createdAt)));
  for (const pending of state.pending) items.push(messageItem(state.user.id, pending.content, undefined));
  if (items.length === 0) {
    const empty = document.createElement('li');
    empty.className = 'note';
    empty.textContent = 'No messages yet.';
    items.push(empty);
  }
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function messageItem(from, content, at) {
  const item = document.createElement('li');
  item.className = `message${from === state.user.id ? ' mine' : ''}${at ? '' : ' pending'}`;
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = at ? `${from} · ${at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}` : `${from} · sending…`;
  const body = document.createElement('div');
  body.className = 'content';
  body.textContent = content;
  item.append(meta, body);
  return item;
}

// ------------------------------------------------------------------ data

async function loadConversations() {
  const list = await api('GET', '/conversations');
  state.conversations = new Map(list.map((conversation) => [conversation.id, conversation]));
  if (state.openId !== undefined && !state.conversations.has(state.openId)) closeConversation('You are no longer in that conversation.');
  renderConversations();
  renderHeader();
}

/** Fetches what the open conversation has after the newest message shown: the refresh path and the gap path. */
async function catchUp() {
  const id = state.openId;
  if (id === undefined) return;
  const last = Math.max(0, ...state.messages.keys());
  const messages = await api('GET', `/conversations/${id}/messages${last > 0 ? `?after=${last}` : ''}`);
  if (state.openId !== id) return;
  for (const message of messages) state.messages.set(message.id, message);
  renderMessages();
}

async function openConversation(id) {
  state.openId = id;
  state.messages = new Map();
  state.pending = [];
  state.unread.delete(id);
  $('#empty').hidden = true;
  $('#conversation').hidden = false;
  notice();
  renderConversations();
  renderHeader();
  renderMessages();
  await catchUp().catch((error) => notice(error.message));
  $('#composer input').focus();
}

function closeConversation(text) {
  state.openId = undefined;
  state.messages = new Map();
  $('#conversation').hidden = true;
  const empty = $('#empty');
  empty.hidden = false;
  empty.textContent = text ?? 'Pick a conversation.';
}

// ------------------------------------------------------------------ realtime

function startRealtime() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const client = connect({ url: `${scheme}//${location.host}${API}/ws/chat`, token: state.token });
  state.client = client;
  renderStatus(client.state);
  client.on('state', renderStatus);
  client.on('welcome', () => {
    // After a reconnect (a server restart, say), the server's history may be gone or
    // restarted: refetching from the database is what makes the page whole again.
    if (state.welcomed) loadConversations().then(catchUp).catch((error) => notice(error.message));
    state.welcomed = true;
  });
  client.on('message', ({ room, data }) => {
    const id = conversationIdOf(room);
    if (id === undefined || !data || typeof data.id !== 'number') return;
    if (id === state.openId) {
      state.messages.set(data.id, data);
      renderMessages();
    } else {
      state.unread.set(id, (state.unread.get(id) ?? 0) + 1);
      renderConversations();
    }
  });
  client.on('gap', ({ room }) => {
    if (conversationIdOf(room) === state.openId) catchUp().catch((error) => notice(error.message));
  });
  // Added to a conversation (or a new one was made with us) while the page is open.
  client.on('joined', ({ room }) => {
    const id = conversationIdOf(room);
    if (id !== undefined && !state.conversations.has(id)) loadConversations().catch((error) => notice(error.message));
  });
  client.on('left', () => loadConversations().catch((error) => notice(error.message)));
  client.on('presence', ({ user, event }) => {
    if (event === 'online') state.online.add(user);
    else state.online.delete(user);
    renderHeader();
  });
  client.on('error', (error) => console.warn('roomwire:', error.code, error.message));
}

async function send(content) {
  const id = state.openId;
  const conversation = state.conversations.get(id);
  if (!conversation) return;
  const pending = { content };
  state.pending.push(pending);
  renderMessages();
  try {
    // Queued while offline and sent again after a reconnect with the same cid: stored once.
    await state.client.publish(conversation.room, { content });
    notice();
    // The publisher gets an ack, not its own message: fetch the stored one.
    if (state.openId === id) await catchUp();
  } catch (error) {
    notice(`Not sent: ${error.message}`);
  } finally {
    state.pending = state.pending.filter((entry) => entry !== pending);
    if (state.openId === id) renderMessages();
  }
}

// ------------------------------------------------------------------ session

async function login(username) {
  const response = await fetch(`${API}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username }),
  });
  const body = await response.json();
  if (!response.ok) throw new HttpError(response.status, body);
  state.token = body.token;
  state.user = body.user;
  // Per tab: two tabs can be two different users.
  sessionStorage.setItem('chat.token', body.token);
  sessionStorage.setItem('chat.user', JSON.stringify(body.user));
}

function logout() {
  sessionStorage.removeItem('chat.token');
  sessionStorage.removeItem('chat.user');
  state.client?.close();
  location.reload();
}

async function enter() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#status').hidden = false;
  $('#logout').hidden = false;
  const me = $('#me');
  me.hidden = false;
  me.textContent = `${state.user.name} (${state.user.id})`;
  startRealtime();
  await loadConversations();
}

for (const button of document.querySelectorAll('#login button[data-user]')) {
  button.addEventListener('click', async () => {
    try {
      await login(button.dataset.user);
      await enter();
    } catch (error) {
      const el = $('#login-error');
      el.hidden = false;
      el.textContent = error.message;
    }
  });
}

$('#logout').addEventListener('click', logout);

$('#composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = event.target.elements.content;
  const content = input.value.trim();
  if (!content) return;
  input.value = '';
  void send(content);
});

$('#add-participant').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = event.target.elements.user;
  try {
    await api('POST', `/conversations/${state.openId}/participants`, { user: input.value.trim() });
    input.value = '';
    notice();
    await loadConversations();
  } catch (error) {
    notice(error.message);
  }
});

$('#leave').addEventListener('click', async () => {
  try {
    await api('DELETE', `/conversations/${state.openId}/participants/${encodeURIComponent(state.user.id)}`);
    closeConversation();
    await loadConversations();
  } catch (error) {
    notice(error.message);
  }
});

$('#new-conversation').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = event.target.elements.title;
  try {
    const conversation = await api('POST', '/conversations', { title: input.value.trim() });
    input.value = '';
    await loadConversations();
    await openConversation(conversation.id);
  } catch (error) {
    notice(error.message);
  }
});

if (state.token && state.user) {
  enter().catch((error) => console.error(error));
} else {
  $('#login').hidden = false;
}
