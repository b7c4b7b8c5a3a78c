"""The text the built-in tokenizer is trained on (original prose, written for this package).

Changing one character changes the built-in tokenizer and so every cached
prefix hash: the test of the tokenizer's fingerprint guards it.
"""

CORPUS = """\
A rumor spreads the way news spreads in a small town. One node hears something new and tells a
few neighbours at random; each of them tells a few more, and after a handful of rounds the whole
cluster knows. Nobody is in charge, nobody keeps the master copy, and yet every node ends up with
the same view of the world, because the values it carries merge: two versions of the same record
combine into one that includes both, whatever order they arrive in.

The fleet serves language models. Each machine holds one or more models in memory and answers
requests for them. A request names a model and carries a prompt; the answer is a stream of tokens,
one after another, until the model says it is done or the request runs out of room. The first
token takes the longest, because the whole prompt must be read before anything can be written.
After that, every new token costs about the same, and many requests can share each step.

Serving well is mostly bookkeeping. The keys and values that attention needs are kept in a pool of
fixed blocks, sixteen tokens each, allocated once when the model loads. A request borrows blocks
as it grows and returns them when it ends. Two requests that begin with the same words can share
the blocks of their common beginning, so the second one starts sooner. When the pool runs dry, the
youngest request steps aside and starts again later, and nothing crashes.

The scheduler wakes up for every step. It looks at the requests that are running, gives each one
the tokens it needs, and then lets waiting requests join while there is room in the budget. Long
prompts are cut into chunks, so a reader of a long document never stalls the writers of short
replies. Time to first token, tokens per second, and the number of requests waiting are the
numbers that matter, and every node tells its peers about them.

The router reads those numbers, knowing they are a little old. Sending everything to the node that
looked least busy a second ago is a classic mistake: every router does the same and the node is
flooded. Picking the better of two random choices is robust, and remembering what you sent
yourself helps more. A prompt that shares a long prefix with one served before should go back to
the node that still holds those blocks, unless that node is already too busy.

Questions people ask: How many tokens per second? What is the latency at the ninetieth percentile?
Which node has the model loaded? Is the cache warm? What happens when a machine dies in the middle
of an answer? The honest answers are numbers measured on a real machine, with the command that
produced them, the date, and the reasons when a target was missed.

Numbers and symbols appear too: 0 1 2 3 4 5 6 7 8 9, 10, 16, 32, 64, 128, 256, 512, 1024, 2048.
Punctuation: commas, periods. Colons: semicolons; (parentheses) [brackets] {braces} "quotes"
'apostrophes' - dashes _ underscores + plus = equals * stars / slashes \\ backslashes | pipes.
Code looks like this: def step(self) -> list[Output]: return [out for out in outputs if out.ok]
and like this: for (int i = 0; i < n; i++) { total += x[i]; } // a comment
The end of a message is marked, the next speaker takes over, and the conversation goes on.
"""
