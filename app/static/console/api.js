// The console's link to the API: GraphQL over HTTP (fetch) and one graphql-transport-ws
// socket (the vendored graphql-ws client) for every subscription, both on this origin.
// Tokens live in localStorage: the page runs under a CSP that allows no inline or foreign
// script, which is what keeps them from other code.
import { createClient } from './vendor/graphql-ws.js';

const STORE = 'crunchql.session';
const ENDPOINT = '/graphql';
const listeners = new Set();

export class ApiError extends Error {
  constructor(errors) {
    super(errors.map((e) => e.message).join('; '));
    this.errors = errors;
    const first = errors[0] || {};
    this.code = (first.extensions || {}).code || null;
    this.field = (first.extensions || {}).field || null;
  }
}

export function loadSession() {
  try {
    return JSON.parse(localStorage.getItem(STORE)) || null;
  } catch {
    return null;
  }
}

let session = loadSession();

export function saveSession(value) {
  session = value;
  if (value) localStorage.setItem(STORE, JSON.stringify(value));
  else localStorage.removeItem(STORE);
  listeners.forEach((listener) => listener(session));
}

export function onSession(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function expiresSoon(token) {
  try {
    const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return payload.exp * 1000 - Date.now() < 30_000;
  } catch {
    return true;
  }
}

async function post(query, variables, token) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(ENDPOINT, {
      method: 'POST',
      headers,
      body: JSON.stringify({ query, variables }),
    });
  } catch {
    throw new ApiError([{ message: 'The server cannot be reached.', extensions: { code: 'NETWORK' } }]);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError([{ message: `The server answered ${response.status}.` }]);
  }
  if (body.errors && body.errors.length) throw new ApiError(body.errors);
  return body.data;
}

let refreshing = null;

// One refresh at a time: refresh tokens rotate, and a second use of the old one would
// end the session.
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      if (!session || !session.refreshToken) return false;
      try {
        const data = await post(
          'mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }',
          { t: session.refreshToken },
        );
        saveSession({ ...session, ...data.refreshToken });
        return true;
      } catch (error) {
        if (error.code !== 'NETWORK') saveSession(null);
        return false;
      }
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

async function freshToken() {
  if (session && session.accessToken && expiresSoon(session.accessToken)) await refresh();
  return session && session.accessToken;
}

export async function request(query, variables = {}) {
  const token = await freshToken();
  try {
    return await post(query, variables, token);
  } catch (error) {
    if (error.code === 'UNAUTHENTICATED' && token && (await refresh())) {
      return post(query, variables, session.accessToken);
    }
    throw error;
  }
}

export async function signIn(mutation, email, password) {
  const data = await post(
    `mutation($e: String!, $p: String!) { ${mutation}(email: $e, password: $p)
       { accessToken refreshToken user { id email role } } }`,
    { e: email, p: password },
  );
  const payload = data[mutation];
  saveSession({
    accessToken: payload.accessToken,
    refreshToken: payload.refreshToken,
    user: payload.user,
  });
}

let socket = null;
const reconnectListeners = new Set();

function client() {
  if (!socket) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    socket = createClient({
      url: `${scheme}://${location.host}${ENDPOINT}`,
      connectionParams: async () => {
        const token = await freshToken();
        return token ? { Authorization: `Bearer ${token}` } : {};
      },
      retryAttempts: Infinity,
      shouldRetry: () => true,
      keepAlive: 20_000,
      on: {
        connected: (_socket, _payload, wasRetry) => {
          // Events sent while the socket was down are lost: views re-read their state.
          if (wasRetry) reconnectListeners.forEach((listener) => listener());
        },
      },
    });
  }
  return socket;
}

export function onReconnect(listener) {
  reconnectListeners.add(listener);
  return () => reconnectListeners.delete(listener);
}

// Subscribe; `next` gets each event's data. Returns the function that unsubscribes.
export function subscribe(query, variables, { next, error }) {
  return client().subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors && result.errors.length) error && error(new ApiError(result.errors));
        else if (result.data) next(result.data);
      },
      error: (reason) => error && error(reason instanceof Error ? reason : new Error(String(reason))),
      complete: () => {},
    },
  );
}

export async function signOut(hasLogout) {
  const current = session;
  if (hasLogout && current && current.refreshToken) {
    try {
      await request('mutation($t: String!) { logout(refreshToken: $t) }', { t: current.refreshToken });
    } catch {
      // The tokens are forgotten here whatever the server says.
    }
  }
  saveSession(null);
  if (socket) {
    socket.dispose();
    socket = null;
  }
}
