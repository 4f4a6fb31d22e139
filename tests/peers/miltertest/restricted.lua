-- restricted.lua -- an account that goes over its recipient limit is stopped.
--
--   miltertest -s restricted.lua -D sock=inet:PORT@127.0.0.1 -D limit=N \
--       [-D user=spammer@example.com] [-D rcpt_domain=example.net]
--
-- The socket may instead come from the environment: MILTER_SOCKET=inet:PORT@127.0.0.1.
--
-- An authenticated client ({auth_authen}=spammer@example.com, {auth_type}=PLAIN,
-- from 198.51.100.23) sends one message to N+1 external recipients
-- r1@example.net ... r<N+1>@example.net:
--   MAIL FROM                 -> SMFIR_CONTINUE
--   RCPT TO #1 .. #N          -> SMFIR_CONTINUE
--   RCPT TO #N+1              -> SMFIR_REPLYCODE   (outbound-guard: "550 5.2.2 ...")
-- then the client gives up on the message (mt.abort) and starts a new one:
--   MAIL FROM                 -> SMFIR_REPLYCODE   (outbound-guard: "550 5.1.8 ...")
--
-- miltertest cannot show the text of a reply before end-of-message: it reads a
-- SMFIR_REPLYCODE packet and keeps only its command byte, so the "550 5.2.2" and
-- "550 5.1.8" texts are not checked here (only mt.eom_check(conn, MT_SMTPREPLY,
-- code, xcode, text) sees reply text, and only for replies given at EOM).
--
-- The account's counters live in the filter: run this against a freshly started
-- filter (or with a -D user=... it has not seen yet). Against a filter that never
-- rejects (ref-milter) the script fails at RCPT #N+1, as it should.

local SCRIPT = "restricted.lua"

------------------------------------------------------------------------------
-- helpers (the same in every script in this directory)

local function param(name, env, default)
	local v = rawget(_G, name)
	if v == nil and env ~= nil then v = os.getenv(env) end
	if v == nil then v = default end
	return v
end

local function fail(fmt, ...)
	error(string.format(fmt, ...), 0)
end

local reply_names = {
	[SMFIR_CONTINUE] = "SMFIR_CONTINUE", [SMFIR_ACCEPT] = "SMFIR_ACCEPT",
	[SMFIR_REJECT] = "SMFIR_REJECT", [SMFIR_TEMPFAIL] = "SMFIR_TEMPFAIL",
	[SMFIR_DISCARD] = "SMFIR_DISCARD", [SMFIR_REPLYCODE] = "SMFIR_REPLYCODE",
	[SMFIR_SKIP] = "SMFIR_SKIP",
}

local function rname(r)
	if r == nil then return "nil" end
	if reply_names[r] ~= nil then return reply_names[r] end
	if r == 0 then return "no reply" end
	local i = math.tointeger(r)
	if i ~= nil and i > 32 and i < 127 then
		return string.format("'%s' (%d)", string.char(i), i)
	end
	return tostring(r)
end

local conn

-- check one step: err is what the mt.* call returned, want one reply or a list
local function expect(what, err, want)
	if err ~= nil then
		fail("%s: miltertest: %s", what, tostring(err))
	end
	local got = mt.getreply(conn)
	local wants = type(want) == "table" and want or { want }
	for _, w in ipairs(wants) do
		if got == w then return got end
	end
	local names = {}
	for _, w in ipairs(wants) do names[#names + 1] = rname(w) end
	fail("%s: expected %s, got %s", what, table.concat(names, " or "), rname(got))
end

-- did the filter negotiate this stage away?
local function skips(flag, what)
	if mt.test_option(conn, flag) then
		mt.echo(SCRIPT .. ": " .. what .. ": not sent (filter negotiated it away)")
		return true
	end
	return false
end

local function open(sock)
	conn = mt.connect(sock, 40, 0.25)
	if conn == nil then
		fail("cannot connect to %s", sock)
	end
	local err = mt.negotiate(conn, nil, nil, nil)
	if err ~= nil then
		fail("negotiate: %s", tostring(err))
	end
	if mt.getreply(conn) ~= string.byte("O") then
		fail("negotiate: filter refused (reply %s)", rname(mt.getreply(conn)))
	end
end

local function run(main)
	local ok, msg = pcall(main)
	io.stdout:flush()
	if not ok then
		io.stderr:write(SCRIPT, ": FAIL: ", tostring(msg), "\n")
		error(msg, 0) -- miltertest exits with status 1
	end
	print(SCRIPT .. ": ok")
end

-- macro stages miltertest has no constant for
local SMFIC_DATA_ = string.byte("T")
local SMFIC_EOM_ = string.byte("E")

------------------------------------------------------------------------------

local function main()
	local sock = param("sock", "MILTER_SOCKET", nil)
	if sock == nil then
		fail("no socket: pass -D sock=inet:PORT@127.0.0.1 or set MILTER_SOCKET")
	end
	local limit_arg = param("limit", nil, nil)
	local limit = limit_arg ~= nil and math.tointeger(tonumber(limit_arg)) or nil
	if limit == nil or limit < 0 then
		fail("pass the account's recipient limit as -D limit=N (N >= 0), got %s", tostring(limit_arg))
	end
	local user = param("user", nil, "spammer@example.com")
	local domain = param("rcpt_domain", nil, "example.net")
	local client_addr = "198.51.100.23"
	local client_name = "dsl-23.example.org"
	local daemon = param("daemon", nil, "ORIGINATING")

	open(sock)

	if mt.test_option(conn, SMFIP_NOMAIL) or mt.test_option(conn, SMFIP_NORCPT) then
		fail("filter negotiated away MAIL or RCPT; it cannot enforce a recipient limit")
	end

	if not skips(SMFIP_NOCONNECT, "connect") then
		mt.macro(conn, SMFIC_CONNECT, "{client_addr}", client_addr, "{client_name}", client_name,
			"{daemon_name}", daemon, "j", "mail.example.com")
		expect("connect", mt.conninfo(conn, client_name, client_addr), SMFIR_CONTINUE)
	end
	if not skips(SMFIP_NOHELO, "helo") then
		expect("helo", mt.helo(conn, "dsl-23.example.org"), SMFIR_CONTINUE)
	end

	local function mail(qid, tag, want, why)
		mt.macro(conn, SMFIC_MAIL, "i", qid, "{auth_authen}", user, "{auth_type}", "PLAIN",
			"{mail_addr}", user, "{client_addr}", client_addr, "{client_name}", client_name,
			"{daemon_name}", daemon)
		local err = mt.mailfrom(conn, "<" .. user .. ">")
		if err ~= nil then fail("%s: miltertest: %s", tag, tostring(err)) end
		local got = mt.getreply(conn)
		if got ~= want then
			fail("%s: expected %s%s, got %s", tag, rname(want), why, rname(got))
		end
	end

	-- transaction 1: N recipients pass, recipient N+1 is refused
	local qid = "6ReStR1c01"
	mail(qid, "transaction 1: MAIL FROM <" .. user .. ">", SMFIR_CONTINUE,
		" (is the account already restricted from an earlier run?)")
	for i = 1, limit + 1 do
		local r = "r" .. i .. "@" .. domain
		mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", r, "i", qid)
		local err = mt.rcptto(conn, "<" .. r .. ">")
		if err ~= nil then fail("RCPT TO #%d <%s>: miltertest: %s", i, r, tostring(err)) end
		local got = mt.getreply(conn)
		if i <= limit then
			if got ~= SMFIR_CONTINUE then
				fail("RCPT TO #%d <%s>: expected SMFIR_CONTINUE (within limit=%d), got %s",
					i, r, limit, rname(got))
			end
		elseif got ~= SMFIR_REPLYCODE then
			fail("RCPT TO #%d <%s>: expected SMFIR_REPLYCODE (550 5.2.2, limit=%d exceeded), got %s",
				i, r, limit, rname(got))
		end
	end
	local err = mt.abort(conn)
	if err ~= nil then fail("abort: %s", tostring(err)) end

	-- transaction 2: the account is now restricted
	mail("6ReStR1c02", "transaction 2: MAIL FROM <" .. user .. ">", SMFIR_REPLYCODE,
		" (550 5.1.8, account restricted)")
	err = mt.abort(conn)
	if err ~= nil then fail("abort: %s", tostring(err)) end

	mt.disconnect(conn)
end

run(main)
