// The demo chat. It uses only the script-tag build's global `PubSub`, as a page without a
// bundler would, and only the package's public API.
(function () {
  'use strict';
  var $ = function (id) {
    return document.getElementById(id);
  };
  var params = new URLSearchParams(location.search);
  var me = params.get('user');

  if (!me) {
    $('sign-in').hidden = false;
    $('user-id').focus();
    return;
  }

  var client = PubSub.createClient({
    endPoint: (location.protocol == 'https:' ? 'wss://' : 'ws://') + location.host,
    userId: me,
    // A message typed during a reconnect waits for the connection instead of failing.
    queueWhileOffline: true,
  });

  var storageKey = 'pubsub-demo:people:' + me;
  var people = new Map(); // user -> { presence, unread }
  var conversations = new Map(); // user -> [{ mine, text, note, at }]
  var selected = null;
  var tabLog = [];

  // ---- people and their presence -------------------------------------------------------

  function addPeople(users) {
    var fresh = users.filter(function (u) {
      return u && u != me && !people.has(u);
    });
    if (!fresh.length) return;
    fresh.forEach(function (u) {
      people.set(u, { presence: null, unread: 0 });
    });
    localStorage.setItem(storageKey, JSON.stringify(Array.from(people.keys())));
    renderPeople();
    // The callback gets each user's presence now and on every change; the client watches
    // again by itself after a reconnect.
    client
      .watch(fresh, function (presence) {
        var person = people.get(presence.user);
        if (person) person.presence = presence;
        renderPeople();
        if (presence.user == selected) renderChat();
      })
      .catch(function (e) {
        logTab('could not watch ' + fresh.join(', ') + ': ' + e.error.message);
      });
  }

  function describe(p) {
    if (!p) return 'unknown';
    if (p.status == 'ONLINE') return p.clients + (p.clients == 1 ? ' tab' : ' tabs') + ' open';
    if (p.status == 'AWAY') return 'away since ' + time(p.awaySinceTs);
    return p.lastOnlineTs ? 'last seen ' + time(p.lastOnlineTs) : 'never seen';
  }

  function time(ts) {
    return ts ? new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '?';
  }

  function renderPeople() {
    var list = $('people');
    list.textContent = '';
    people.forEach(function (person, user) {
      var status = person.presence ? person.presence.status : 'OFFLINE';
      var li = el('li', user == selected ? 'selected' : '');
      li.dataset.user = user;
      li.dataset.status = status;
      li.appendChild(el('span', 'dot ' + status));
      var who = el('span', 'who', user);
      who.appendChild(el('small', '', status + ' · ' + describe(person.presence)));
      li.appendChild(who);
      if (person.unread) li.appendChild(el('span', 'unread', String(person.unread)));
      li.onclick = function () {
        select(user);
      };
      list.appendChild(li);
    });
  }

  // ---- chat -----------------------------------------------------------------------------

  function conversation(user) {
    if (!conversations.has(user)) conversations.set(user, []);
    return conversations.get(user);
  }

  function select(user) {
    selected = user;
    people.get(user).unread = 0;
    $('text').disabled = $('send').disabled = false;
    $('text').focus();
    renderPeople();
    renderChat();
  }

  function renderChat() {
    if (!selected) return;
    var p = people.get(selected).presence;
    $('chat-title').textContent = 'Chat with ' + selected + ' · ' + (p ? p.status : '…');
    var list = $('messages');
    list.textContent = '';
    conversation(selected).forEach(function (m) {
      var li = el('li', m.mine ? 'mine' : '', m.text);
      if (m.note) {
        var note = el('small', '', m.note);
        if (m.retry) {
          note.style.cursor = 'pointer';
          note.onclick = m.retry;
        }
        li.appendChild(note);
      }
      list.appendChild(li);
    });
    list.scrollTop = list.scrollHeight;
  }

  function send(to, text) {
    var entry = { mine: true, text: text, note: 'sending…' };
    conversation(to).push(entry);
    renderChat();
    function attempt(promise) {
      promise.then(
        function (result) {
          var r = result.recipients[to];
          entry.note = r && r.online ? 'delivered to ' + r.clients + (r.clients == 1 ? ' tab' : ' tabs') : to + ' is offline: not delivered';
          entry.retry = null;
          renderChat();
        },
        function (e) {
          // Same message id on retry: the server never delivers it twice.
          entry.note = 'failed (' + e.error.name + ')' + (e.error.retryable ? ' · click to retry' : '');
          entry.retry = e.error.retryable
            ? function () {
                entry.note = 'retrying…';
                renderChat();
                attempt(e.retry());
              }
            : null;
          renderChat();
        },
      );
    }
    attempt(client.sendToUser({ type: 'CHAT_MESSAGE', text: text }, to));
    // My other tabs show the conversation too.
    client.broadcast({ type: 'CHAT_SENT', to: to, text: text }).catch(function () {});
  }

  client.subscribe('CHAT_MESSAGE', function (action, meta) {
    var from = meta.from && meta.from.user;
    if (!from || from == me) return;
    addPeople([from]);
    conversation(from).push({ mine: false, text: String(action.text) });
    if (from != selected) people.get(from).unread++;
    renderPeople();
    renderChat();
  });

  client.subscribe('CHAT_SENT', function (action) {
    addPeople([action.to]);
    conversation(action.to).push({ mine: true, text: String(action.text), note: 'sent from another tab' });
    renderChat();
  });

  // ---- my status and my tabs --------------------------------------------------------------

  function renderMe() {
    var status = client.getStatus();
    $('my-status').textContent = status;
    $('my-status').className = 'pill ' + status;
    var p = client.getPresence();
    $('my-tabs').textContent = p
      ? p.clients + (p.clients == 1 ? ' tab' : ' tabs') + ' · ' + (p.activeClient == client.getClientId() ? 'this tab is active' : 'another tab is active')
      : '';
  }

  function logTab(text) {
    tabLog.unshift(time(Date.now()) + '  ' + text);
    tabLog.length = Math.min(tabLog.length, 8);
    var list = $('tab-log');
    list.textContent = '';
    tabLog.forEach(function (line) {
      list.appendChild(el('li', '', line));
    });
  }

  client.onStatusChange(function (e) {
    logTab('status ' + e.previousStatus + ' → ' + e.status);
    renderMe();
  });
  client.subscribe('@pubsub/CLIENT_CONNECTED', function (e) {
    logTab('another tab opened (' + e.clients + ' open)');
    renderMe();
  });
  client.subscribe('@pubsub/CLIENT_DISCONNECTED', function (e) {
    logTab('a tab closed (' + e.clients + ' open)');
    renderMe();
  });
  client.subscribe('@pubsub/ACTIVE_CLIENT_CHANGE', function (e) {
    logTab(e.activeClient == client.getClientId() ? 'this tab became the active one' : 'another tab became the active one');
    renderMe();
  });

  // ---- wiring -------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text; // text from other users is never parsed as HTML
    return node;
  }

  $('me').hidden = false;
  $('app').hidden = false;
  $('my-name').textContent = me;
  document.title = me + ' · PubSub demo';
  renderMe();

  $('sign-out').onclick = function () {
    client.close();
    location.search = '';
  };
  $('add-person').onsubmit = function (e) {
    e.preventDefault();
    addPeople($('person-id').value.split(',').map(function (s) {
      return s.trim();
    }));
    $('person-id').value = '';
  };
  $('compose').onsubmit = function (e) {
    e.preventDefault();
    var text = $('text').value.trim();
    if (!text || !selected) return;
    $('text').value = '';
    send(selected, text);
  };

  var initial = JSON.parse(localStorage.getItem(storageKey) || '[]');
  (params.get('watch') || '').split(',').forEach(function (u) {
    if (u.trim()) initial.push(u.trim());
  });
  // Watch requests made now wait for the connection (queueWhileOffline).
  addPeople(initial);
  if (params.get('chat') && people.has(params.get('chat'))) select(params.get('chat'));

  window.demo = { client: client }; // for the end-to-end test and for poking around in devtools
})();
