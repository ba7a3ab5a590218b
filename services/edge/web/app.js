// chatlog web client
