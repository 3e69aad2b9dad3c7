"""The half-price lanes: Flex rides the online engine; Batch lives here.

`api.py` is what every provider's batch client offers, `gemini_batch.py` and
`openai_batch.py` speak the wire, and `runner.py` splits pending rows into batches, records
each batch in the store before submitting it, polls, and hands answers to the same judge
and the same single writer as online calls.
"""
