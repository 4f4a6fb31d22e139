-- all-stages.lua -- drive a milter through every protocol stage.
--
--   miltertest -s all-stages.lua -D sock=inet:PORT@127.0.0.1 \
--       [-D user=alice@example.com] [-D eom=continue|accept|any] \
--       [-D client_addr=198.51.100.7] [-D daemon=ORIGINATING]
--
-- The socket may instead come from the environment: MILTER_SOCKET=inet:PORT@127.0.0.1.
--
-- One connection: negotiate, connect, helo, an unknown command, then
--   transaction 1: MAIL, 3 RCPTs, DATA, 4 headers (one folded), EOH, 2 body chunks, EOM;
--   transaction 2: MAIL, 1 RCPT, then abort (mt.abort);
--   transaction 3: like transaction 1;
--   QUIT.
-- Every reply must be SMFIR_CONTINUE (at EOM: as -D eom says, default continue).
-- A stage the filter declined in negotiation (SMFIP_NO*) is not sent, and neither
-- are its macros (as Postfix does); for a stage whose reply the filter waived
-- (SMFIP_NR_*) miltertest waits for nothing and reports SMFIR_CONTINUE.
-- Any other reply fails the script: the reason goes to stderr and miltertest
-- exits with status 1.

local SCRIPT = "all-stages.lua"

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
	local user = param("user", nil, "alice@example.com")
	local client_addr = param("client_addr", nil, "198.51.100.7")
	local client_name = param("client_name", nil, "client.example.com")
	local daemon = param("daemon", nil, "ORIGINATING")
	local eom = param("eom", nil, "continue")

	local eom_want
	if eom == "continue" then
		eom_want = SMFIR_CONTINUE
	elseif eom == "accept" then
		eom_want = SMFIR_ACCEPT
	elseif eom == "any" then
		eom_want = { SMFIR_CONTINUE, SMFIR_ACCEPT }
	else
		fail("-D eom must be continue, accept or any, not %s", tostring(eom))
	end

	open(sock)

	if not skips(SMFIP_NOCONNECT, "connect") then
		mt.macro(conn, SMFIC_CONNECT, "{client_addr}", client_addr, "{daemon_name}", daemon,
			"{client_name}", client_name, "j", "mail.example.com")
		expect("connect", mt.conninfo(conn, client_name, client_addr), SMFIR_CONTINUE)
	end

	if not skips(SMFIP_NOHELO, "helo") then
		mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3")
		expect("helo", mt.helo(conn, "client.example.com"), SMFIR_CONTINUE)
	end

	if not skips(SMFIP_NOUNKNOWN, "unknown command") then
		expect("unknown command", mt.unknown(conn, "XFROBNICATE now"), SMFIR_CONTINUE)
	end

	local function transaction(n, qid, complete)
		local tag = "transaction " .. n .. ": "

		if not skips(SMFIP_NOMAIL, tag .. "MAIL") then
			mt.macro(conn, SMFIC_MAIL, "i", qid, "{auth_authen}", user, "{auth_type}", "PLAIN",
				"{mail_addr}", user, "{client_addr}", client_addr,
				"{client_name}", client_name, "{daemon_name}", daemon)
			expect(tag .. "MAIL FROM",
				mt.mailfrom(conn, "<" .. user .. ">", "SIZE=1234", "BODY=8BITMIME"),
				SMFIR_CONTINUE)
		end

		local rcpts = { "bob@example.net", "carol@example.org", "dave@example.com" }
		if not complete then rcpts = { "erin@example.net" } end
		if not skips(SMFIP_NORCPT, tag .. "RCPT") then
			for i, r in ipairs(rcpts) do
				mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", r, "i", qid)
				local err
				if i == 1 then
					err = mt.rcptto(conn, "<" .. r .. ">", "NOTIFY=SUCCESS,FAILURE")
				else
					err = mt.rcptto(conn, "<" .. r .. ">")
				end
				expect(tag .. "RCPT TO #" .. i .. " <" .. r .. ">", err, SMFIR_CONTINUE)
			end
		end

		if not complete then
			local err = mt.abort(conn)
			if err ~= nil then fail("%sabort: %s", tag, tostring(err)) end
			return
		end

		if not skips(SMFIP_NODATA, tag .. "DATA") then
			mt.macro(conn, SMFIC_DATA_, "i", qid)
			expect(tag .. "DATA", mt.data(conn), SMFIR_CONTINUE)
		end

		if not skips(SMFIP_NOHDRS, tag .. "headers") then
			-- (miltertest itself adds the leading space if SMFIP_HDR_LEADSPC was negotiated)
			local headers = {
				{ "From", "Alice <" .. user .. ">" },
				{ "To", "Bob <bob@example.net>, Carol <carol@example.org>" },
				-- folded the way Postfix passes it on: line break and indentation kept
				{ "Subject", "a folded subject\n\tthat goes on" },
				{ "Message-ID", "<" .. qid .. "@example.com>" },
			}
			for _, h in ipairs(headers) do
				expect(tag .. "header " .. h[1], mt.header(conn, h[1], h[2]), SMFIR_CONTINUE)
			end
		end

		if not skips(SMFIP_NOEOH, tag .. "EOH") then
			expect(tag .. "EOH", mt.eoh(conn), SMFIR_CONTINUE)
		end

		if not skips(SMFIP_NOBODY, tag .. "body") then
			expect(tag .. "body chunk 1",
				mt.bodystring(conn, "Hello Bob,\r\n\r\nthis is a test.\r\n"), SMFIR_CONTINUE)
			expect(tag .. "body chunk 2", mt.bodystring(conn, "-- \r\nAlice\r\n"), SMFIR_CONTINUE)
		end

		mt.macro(conn, SMFIC_EOM_, "i", qid)
		expect(tag .. "EOM", mt.eom(conn), eom_want)
	end

	transaction(1, "4AbC1dEfG1", true)
	transaction(2, "4AbC1dEfG2", false)
	transaction(3, "4AbC1dEfG3", true)

	mt.disconnect(conn)
end

run(main)
