-- accept-inbound.lua -- mail from an unauthenticated outside client is let through at MAIL FROM.
--
--   miltertest -s accept-inbound.lua -D sock=inet:PORT@127.0.0.1 [-D expect=accept|continue]
--       [-D from=ADDRESS] [-D daemon=mx.example.com]
--
-- The socket may instead come from the environment: MILTER_SOCKET=inet:PORT@127.0.0.1.
--
-- Client 192.0.2.10 (mail.example.net), no SMTP AUTH: {client_addr}=192.0.2.10 is
-- sent with the connect and the MAIL macros, {auth_authen} and {auth_type} are not
-- sent at all.
--
--   -D expect=accept (default; outbound-guard): MAIL FROM must be answered with
--     SMFIR_ACCEPT. Then mt.abort (what Postfix sends when the transaction ends)
--     and a second MAIL FROM on the same connection, again SMFIR_ACCEPT.
--   -D expect=continue (a filter that judges nothing, e.g. ref-milter): MAIL FROM
--     and every later stage of the transaction must answer SMFIR_CONTINUE; the
--     second transaction likewise.
--
-- -D from replaces the envelope senders (default sender1@example.net and
-- sender2@example.net); with from=accept@example.net the accept path can be
-- tried on ref-milter, which accepts that sender at MAIL FROM.
--
-- Stages the filter negotiated away (SMFIP_NO*) are not sent. Any unexpected
-- reply fails the script: the reason goes to stderr, miltertest exits with status 1.

local SCRIPT = "accept-inbound.lua"

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
	local expectation = param("expect", nil, "accept")
	if expectation ~= "accept" and expectation ~= "continue" then
		fail("-D expect must be accept or continue, not %s", tostring(expectation))
	end
	local client_addr = "192.0.2.10"
	local client_name = "mail.example.net"
	local daemon = param("daemon", nil, "mx.example.com")

	open(sock)

	if not skips(SMFIP_NOCONNECT, "connect") then
		mt.macro(conn, SMFIC_CONNECT, "{client_addr}", client_addr, "{client_name}", client_name,
			"{daemon_name}", daemon, "j", "mx.example.com")
		expect("connect", mt.conninfo(conn, client_name, client_addr), SMFIR_CONTINUE)
	end

	if not skips(SMFIP_NOHELO, "helo") then
		expect("helo", mt.helo(conn, client_name), SMFIR_CONTINUE)
	end

	local function transaction(n, qid)
		local tag = "transaction " .. n .. ": "
		local from = param("from", nil, "sender" .. n .. "@example.net")

		-- the MAIL stage is where outbound-guard decides; it must not be skipped
		if mt.test_option(conn, SMFIP_NOMAIL) then
			fail("%sfilter negotiated SMFIP_NOMAIL, so it cannot judge MAIL FROM", tag)
		end
		-- no {auth_authen}, no {auth_type}: the client did not authenticate
		mt.macro(conn, SMFIC_MAIL, "i", qid, "{mail_addr}", from, "{client_addr}", client_addr,
			"{client_name}", client_name, "{daemon_name}", daemon)
		local err = mt.mailfrom(conn, "<" .. from .. ">", "BODY=8BITMIME")

		if expectation == "accept" then
			expect(tag .. "MAIL FROM <" .. from .. "> (unauthenticated, " .. client_addr .. ")",
				err, SMFIR_ACCEPT)
			-- the filter is done with this message; Postfix sends an abort at its end
			err = mt.abort(conn)
			if err ~= nil then fail("%sabort: %s", tag, tostring(err)) end
			return
		end

		expect(tag .. "MAIL FROM <" .. from .. ">", err, SMFIR_CONTINUE)
		if not skips(SMFIP_NORCPT, tag .. "RCPT") then
			for i, r in ipairs({ "alice@example.com", "bob@example.com" }) do
				mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", r, "i", qid)
				expect(tag .. "RCPT TO #" .. i .. " <" .. r .. ">", mt.rcptto(conn, "<" .. r .. ">"),
					SMFIR_CONTINUE)
			end
		end
		if not skips(SMFIP_NODATA, tag .. "DATA") then
			mt.macro(conn, SMFIC_DATA_, "i", qid)
			expect(tag .. "DATA", mt.data(conn), SMFIR_CONTINUE)
		end
		if not skips(SMFIP_NOHDRS, tag .. "headers") then
			expect(tag .. "header From", mt.header(conn, "From", "<" .. from .. ">"), SMFIR_CONTINUE)
			expect(tag .. "header Subject",
				mt.header(conn, "Subject", "inbound\n\tfolded"), SMFIR_CONTINUE)
		end
		if not skips(SMFIP_NOEOH, tag .. "EOH") then
			expect(tag .. "EOH", mt.eoh(conn), SMFIR_CONTINUE)
		end
		if not skips(SMFIP_NOBODY, tag .. "body") then
			expect(tag .. "body", mt.bodystring(conn, "Hello from outside.\r\n"), SMFIR_CONTINUE)
		end
		mt.macro(conn, SMFIC_EOM_, "i", qid)
		expect(tag .. "EOM", mt.eom(conn), SMFIR_CONTINUE)
	end

	transaction(1, "5InB0uNd01")
	transaction(2, "5InB0uNd02")

	mt.disconnect(conn)
end

run(main)
