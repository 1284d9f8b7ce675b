"""The client side: the modes, the generation loop over them, op-level remoting, concurrent sessions, KV recovery."""
