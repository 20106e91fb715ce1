package catalogfs;

import javax.security.sasl.AuthenticationException;

import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * HiveServer2's password check ({@code hive.server2.authentication=CUSTOM}) against the users file
 * ({@link UsersFile}). A failed login waits a moment, which slows guessing; the message never says
 * whether the user exists.
 */
public final class PasswordFileAuthenticator implements PasswdAuthenticationProvider {
    static final long FAILURE_DELAY_MS = 300;

    @Override
    public void Authenticate(String user, String password) throws AuthenticationException {
        String role;
        try {
            role = UsersFile.role(user, password);
        } catch (java.io.IOException | RuntimeException exc) {
            throw new AuthenticationException(exc.getMessage() == null ? exc.toString() : exc.getMessage());
        }
        if (role == null) {
            try {
                Thread.sleep(FAILURE_DELAY_MS);
            } catch (InterruptedException exc) {
                Thread.currentThread().interrupt();
            }
            throw new AuthenticationException("catalogfs: wrong user name or password");
        }
    }
}
